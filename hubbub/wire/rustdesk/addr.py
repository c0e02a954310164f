"""RustDesk ``AddrMangle``: the socket-address encoding inside rendezvous messages.

IPv4 addresses are packed with a 32-bit time salt into a little-endian 128-bit integer (trailing
zero bytes stripped) so that middleboxes do not recognise and rewrite them; IPv6 is 16 address
bytes plus a little-endian port. IPv4-mapped and IPv4-compatible IPv6 addresses (except ``::1``)
are treated as IPv4, matching what clients do, so a dual-stack socket's ``::ffff:a.b.c.d`` peer
encodes exactly like ``a.b.c.d`` (the rule of ``hubbub.ipaddr``).
"""

from __future__ import annotations

import ipaddress

from hubbub.ipaddr import embedded_v4, normalise_ip


__all__ = ["Addr", "decode", "encode", "normalize"]

Addr = tuple[str, int]
"""``(host text, port)``; IPv4 in dotted form, IPv6 in compressed form without brackets."""

def normalize(addr: tuple[object, ...]) -> Addr:
    """``(host, port[, flow, scope])`` from a socket API -> canonical ``(host, port)``.

    Socket APIs already give canonical text, so the common cases skip address parsing (this
    runs for every datagram).
    """
    host = str(addr[0])
    port = addr[1]
    if isinstance(port, int):
        if ":" not in host:
            return host, port
        if host.startswith("::ffff:") and "." in host and "%" not in host:
            return host[7:], port
    try:
        host = normalise_ip(host)
    except ValueError:
        pass  # not an address (a Unix socket path, say): kept as given
    return host, int(str(port))


def encode(host: str, port: int, tm: int = 0) -> bytes:
    """AddrMangle bytes of ``host:port``; ``tm`` is the salt (any 32-bit value decodes).

    Raises:
        ValueError: ``host`` is not an IP address or ``port`` is out of range.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    ip = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    if ip.version == 6:
        v4 = embedded_v4(ip.packed)
        if v4 is None:
            return ip.packed + port.to_bytes(2, "little")
        raw4 = v4
    else:
        raw4 = ip.packed
    tm &= 0xFFFFFFFF
    v = ((int.from_bytes(raw4, "little") + tm) << 49) | (tm << 17) | (port + (tm & 0xFFFF))
    return v.to_bytes(16, "little").rstrip(b"\0")


def decode(data: bytes) -> Addr:
    """The address inside AddrMangle bytes; never raises.

    Empty input gives ``("0.0.0.0", 0)``; a length other than 0–16 or 18 gives ``("::", 0)``
    (clients treat port 0 as "no address").
    """
    if len(data) > 16:
        if len(data) != 18:
            return "::", 0
        ip6 = ipaddress.IPv6Address(data[:16])
        return normalise_ip(str(ip6)), int.from_bytes(data[16:], "little")
    v = int.from_bytes(data.ljust(16, b"\0"), "little")
    tm = (v >> 17) & 0xFFFFFFFF
    ipn = ((v >> 49) - tm) & 0xFFFFFFFF
    port = ((v & 0xFFFFFF) - (tm & 0xFFFF)) & 0xFFFF
    return str(ipaddress.IPv4Address(ipn.to_bytes(4, "little"))), port
