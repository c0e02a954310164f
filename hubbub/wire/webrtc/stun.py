"""STUN (RFC 5389) codec: just what an ICE-lite responder needs.

Pure functions over bytes: parse a message into its attributes, check MESSAGE-INTEGRITY (short-term
credentials, HMAC-SHA1 keyed with the password) and FINGERPRINT, and build a signed Binding
success response carrying XOR-MAPPED-ADDRESS. No I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from dataclasses import dataclass, field

from hubbub.errors import RemoteProtocolError
from hubbub.ipaddr import normalise_ip


__all__ = [
    "ATTR_ERROR_CODE",
    "ATTR_FINGERPRINT",
    "ATTR_ICE_CONTROLLED",
    "ATTR_ICE_CONTROLLING",
    "ATTR_MESSAGE_INTEGRITY",
    "ATTR_PRIORITY",
    "ATTR_USERNAME",
    "ATTR_USE_CANDIDATE",
    "ATTR_XOR_MAPPED_ADDRESS",
    "BINDING_INDICATION",
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "MAGIC_COOKIE",
    "StunError",
    "StunMessage",
    "binding_request",
    "binding_success",
    "is_stun",
    "parse",
    "peek_username",
    "unpack_xor_address",
]

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
FINGERPRINT_XOR = 0x5354554E
MAX_ATTRIBUTES = 32
"""Binding requests carry ~7 attributes; more is hostile."""

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_PRIORITY = 0x0024
ATTR_USE_CANDIDATE = 0x0025
ATTR_FINGERPRINT = 0x8028
ATTR_ICE_CONTROLLED = 0x8029
ATTR_ICE_CONTROLLING = 0x802A


class StunError(RemoteProtocolError):
    """A datagram that looked like STUN but is malformed or unauthenticated."""

    code = "stun"


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A parsed STUN message; ``attrs`` keeps the first value of each attribute type."""

    type: int
    txid: bytes
    attrs: dict[int, bytes] = field(default_factory=dict)
    integrity_offset: int = -1
    """Byte offset of the MESSAGE-INTEGRITY attribute, -1 when absent."""
    raw: bytes = b""

    @property
    def username(self) -> str:
        try:
            return self.attrs.get(ATTR_USERNAME, b"").decode()
        except UnicodeDecodeError:
            return ""

    def check_integrity(self, password: str) -> bool:
        """Whether MESSAGE-INTEGRITY matches ``password`` (short-term credentials)."""
        off = self.integrity_offset
        if off < 0:
            return False
        # The length field must count everything up to and including the MI attribute.
        head = bytearray(self.raw[:off])
        struct.pack_into("!H", head, 2, off + 24 - 20)
        want = hmac.new(password.encode(), bytes(head), hashlib.sha1).digest()
        return hmac.compare_digest(want, self.raw[off + 4:off + 24])


def is_stun(data: bytes) -> bool:
    """RFC 7983 demux: STUN starts with 0..3 and carries the magic cookie."""
    return (len(data) >= 20 and data[0] < 4
            and int.from_bytes(data[4:8], "big") == MAGIC_COOKIE)


def parse(data: bytes) -> StunMessage:
    """Parse one STUN message, verifying FINGERPRINT when present.

    Raises:
        StunError: the message is truncated, inconsistent or its fingerprint is wrong.
    """
    if not is_stun(data):
        raise StunError("not a STUN message")
    msg_type, length, _cookie, txid = HEADER.unpack_from(data)
    if length % 4 or 20 + length != len(data):
        raise StunError("STUN length mismatch")
    attrs: dict[int, bytes] = {}
    pos = 20
    integrity = -1
    count = 0
    while pos < len(data):
        count += 1
        if count > MAX_ATTRIBUTES or pos + 4 > len(data):
            raise StunError("bad STUN attributes")
        atype, alen = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + alen
        if end > len(data):
            raise StunError("STUN attribute overruns the message")
        value = data[pos + 4:end]
        if atype == ATTR_MESSAGE_INTEGRITY:
            if alen != 20:
                raise StunError("bad MESSAGE-INTEGRITY length")
            integrity = pos
        elif atype == ATTR_FINGERPRINT:
            if alen != 4 or end != len(data):
                raise StunError("FINGERPRINT must be last")
            want = (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if int.from_bytes(value, "big") != want:
                raise StunError("bad FINGERPRINT")
        elif integrity >= 0:
            # Only FINGERPRINT may follow MESSAGE-INTEGRITY.
            raise StunError("attribute after MESSAGE-INTEGRITY")
        attrs.setdefault(atype, value)
        pos = end + (-alen % 4)
    return StunMessage(msg_type, txid, attrs, integrity, bytes(data))


def peek_username(data: bytes) -> str:
    """USERNAME of a STUN message without a full parse ("" when absent or malformed)."""
    pos = 20
    n = len(data)
    for _ in range(MAX_ATTRIBUTES):
        if pos + 4 > n:
            return ""
        atype, alen = struct.unpack_from("!HH", data, pos)
        if atype == ATTR_USERNAME:
            try:
                return data[pos + 4:pos + 4 + alen].decode()
            except UnicodeDecodeError:
                return ""
        pos += 4 + alen + (-alen % 4)
    return ""


def _attr(atype: int, value: bytes) -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + b"\x00" * (-len(value) % 4)


def pack_xor_address(host: str, port: int, txid: bytes) -> bytes:
    # An IPv4 client on a dual-stack socket is told its IPv4 address (hubbub.ipaddr's rule).
    ip = ipaddress.ip_address(normalise_ip(host))
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = int(ip) ^ MAGIC_COOKIE
        return struct.pack("!BBHI", 0, 1, xport, xaddr)
    mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + txid, "big")
    return struct.pack("!BBH", 0, 2, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def unpack_xor_address(value: bytes, txid: bytes) -> tuple[str, int]:
    """Decode XOR-MAPPED-ADDRESS.

    Raises:
        StunError: the value is malformed.
    """
    if len(value) < 8:
        raise StunError("short XOR-MAPPED-ADDRESS")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    if family == 1:
        addr = int.from_bytes(value[4:8], "big") ^ MAGIC_COOKIE
        return str(ipaddress.IPv4Address(addr)), port
    if family == 2 and len(value) >= 20:
        mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + txid, "big")
        addr = int.from_bytes(value[4:20], "big") ^ mask
        return str(ipaddress.IPv6Address(addr)), port
    raise StunError("bad XOR-MAPPED-ADDRESS family")


def _finish(msg_type: int, txid: bytes, body: bytes, password: str | None) -> bytes:
    """Append MESSAGE-INTEGRITY (when ``password``) and FINGERPRINT to a message body."""
    if password is not None:
        head = HEADER.pack(msg_type, len(body) + 24, MAGIC_COOKIE, txid)
        mac = hmac.new(password.encode(), head + body, hashlib.sha1).digest()
        body += _attr(ATTR_MESSAGE_INTEGRITY, mac)
    head = HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, txid)
    crc = (zlib.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + body + _attr(ATTR_FINGERPRINT, struct.pack("!I", crc))


def binding_success(txid: bytes, addr: tuple[str, int], password: str) -> bytes:
    """A signed Binding success response telling the peer its mapped address."""
    body = _attr(ATTR_XOR_MAPPED_ADDRESS, pack_xor_address(addr[0], addr[1], txid))
    return _finish(BINDING_SUCCESS, txid, body, password)


def binding_request(txid: bytes, username: str, password: str, priority: int = 0x6E0001FF,
                    use_candidate: bool = False, controlling: int = 0) -> bytes:
    """A signed Binding request (used by tests and the benchmark's client side)."""
    body = _attr(ATTR_USERNAME, username.encode())
    body += _attr(ATTR_PRIORITY, struct.pack("!I", priority))
    body += _attr(ATTR_ICE_CONTROLLING, struct.pack("!Q", controlling))
    if use_candidate:
        body += _attr(ATTR_USE_CANDIDATE, b"")
    return _finish(BINDING_REQUEST, txid, body, password)
