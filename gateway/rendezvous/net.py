"""Listening sockets: dual-stack wildcard, SO_REUSEPORT so gateways share ports."""

from __future__ import annotations

import ipaddress
import socket


__all__ = ["ProxyList", "listen_socket"]


def listen_socket(host: str, port: int, kind: int, rcvbuf: int = 0) -> socket.socket:
    """A bound (and for TCP listening) socket; ``::`` also accepts IPv4 (mapped addresses)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ProxyList:
    """Addresses/CIDRs of trusted reverse proxies."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.nets = []
        for entry in entries:
            try:
                self.nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue

    def trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.nets)
