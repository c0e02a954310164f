"""The one rule for the text of an IP address, so every map, list and log keys a peer alike.

A dual-stack socket shows an IPv4 peer as ``::ffff:a.b.c.d``; RustDesk clients (``try_into_v4``)
also treat the deprecated IPv4-compatible form ``::a.b.c.d`` as IPv4. Both become plain IPv4
here, except ``::`` and ``::1``, which stay the IPv6 unspecified and loopback addresses. Scope ids
(``fe80::1%eth0``) never leave the host and are dropped; brackets and blanks are ignored.
"""

from __future__ import annotations

import ipaddress


__all__ = ["embedded_v4", "normalise_ip"]

_MAPPED = b"\x00" * 10 + b"\xff\xff"
_COMPAT = b"\x00" * 12
_NOT_V4 = (b"\0\0\0\0", b"\0\0\0\1")  # :: and ::1


def embedded_v4(packed6: bytes) -> bytes | None:
    """The four IPv4 octets an IPv6 address stands for (mapped or compatible), or None."""
    prefix = packed6[:12]
    if prefix == _MAPPED or (prefix == _COMPAT and packed6[12:] not in _NOT_V4):
        return packed6[12:]
    return None


def normalise_ip(text: str) -> str:
    """Canonical text of an IP address: IPv4 dotted, IPv6 compressed lower case.

    Raises:
        ValueError: ``text`` is not an IP address.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if ip.version == 6:
        v4 = embedded_v4(ip.packed)
        if v4 is not None:
            return str(ipaddress.IPv4Address(v4))
    return str(ip)
