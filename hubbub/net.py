"""Socket and address helpers shared by every listener.

``listen_socket`` builds the ``SO_REUSEPORT`` listeners that let any number of processes share
the public ports; ``ProxyList`` decides which peers may tell us a client's real address.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping

from hubbub.errors import ServiceError
from hubbub.ipaddr import normalise_ip


__all__ = ["ProxyList", "host_port", "listen_socket", "server_tls"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def listen_socket(host: str, port: int, kind: int = socket.SOCK_STREAM,
                  rcvbuf: int = 0, backlog: int = 1024,
                  reuse_port: bool = True) -> socket.socket:
    """A bound, non-blocking socket (listening, for TCP), by default with ``SO_REUSEPORT``.

    Every listener of every process is built here so that all follow one rule: ``::`` (the
    default when ``BIND`` is unset) accepts IPv4 too, as mapped addresses, so one socket serves
    both families; a specific address narrows it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Restart without waiting out TIME_WAIT. Not for UDP, where it would let two
            # sockets share a port that SO_REUSEPORT is not meant to share.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def server_tls(cert: str, key: str) -> ssl.SSLContext | None:
    """The TLS context of a listener serving ``SSL_CERT``/``SSL_KEY`` (None when unset).

    Raises:
        ServiceError: the files cannot be read or do not hold a matching pair.
    """
    if not (cert and key):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ServiceError(f"cannot load SSL_CERT/SSL_KEY: {exc}") from exc
    return ctx


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """Addresses or CIDRs as networks.

    Raises:
        ValueError: naming the first entry that is neither.
    """
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {entry!r}") from None
    return nets


class ProxyList:
    """Trusted reverse proxies: only their ``X-Real-IP`` / ``X-Forwarded-For`` is believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.nets = parse_networks(entries)

    def trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(normalise_ip(ip))
        except ValueError:
            return False
        return any(addr in net for net in self.nets)

    def client_ip(self, peer_ip: str, headers: Mapping[str, str] | None) -> str:
        """The client's address: the proxy's header when ``peer_ip`` is trusted, else the peer.

        ``X-Real-IP`` wins; otherwise ``X-Forwarded-For`` is read from the right, skipping our
        own proxies: the first other address is the client (entries further left come from the
        client itself and can be forged).
        """
        peer = _or_self(peer_ip)
        if headers is None or not self.nets or not self.trusted(peer):
            return peer
        lowered = {k.lower(): v for k, v in headers.items()}
        candidates = [lowered.get("x-real-ip", "")]
        candidates += reversed(lowered.get("x-forwarded-for", "").split(","))
        leftmost = peer
        for i, text in enumerate(candidates):
            try:
                ip = normalise_ip(text)
            except ValueError:
                continue
            if i == 0 or not self.trusted(ip):
                return ip
            leftmost = ip  # a chain of only our proxies: its first hop is the client
        return leftmost


def _or_self(ip: str) -> str:
    try:
        return normalise_ip(ip)
    except ValueError:
        return ip
