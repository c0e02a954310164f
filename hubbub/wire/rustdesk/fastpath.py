"""Decode the ``RegisterPeer`` heartbeat without building a protobuf message.

Heartbeats are most of an ID server's UDP traffic, and a full parse costs several times more
than reading the two fields straight from the bytes. Only the canonical encoding a protobuf
serializer emits (and its explicit-default variants) is accepted here; anything else returns
None and the caller parses the datagram the ordinary way, so both paths always agree.
"""

from __future__ import annotations

from hubbub.wire.rustdesk import rendezvous_pb2 as pb


__all__ = ["register_peer"]

_LEN = 2  # wire type: length-delimited
_VARINT = 0


def _tag(field_number: int, wire_type: int) -> int:
    tag = field_number << 3 | wire_type
    # One-byte tags keep the checks below a single byte compare.
    assert tag < 0x80, "tag needs a multi-byte varint"
    return tag


_OUTER = _tag(pb.RendezvousMessage.DESCRIPTOR.fields_by_name["register_peer"].number, _LEN)
_ID = _tag(pb.RegisterPeer.DESCRIPTOR.fields_by_name["id"].number, _LEN)
_SERIAL = _tag(pb.RegisterPeer.DESCRIPTOR.fields_by_name["serial"].number, _VARINT)

_U32 = 1 << 32
_INT32_MAX = (1 << 31) - 1
# Varint bytes 6-10 of a negative int32: the 64-bit sign extension.
_NEG_TAIL = b"\xff\xff\xff\xff\x01"
# The continuation bits of a k-byte varint (all bytes but the last) and where they sit.
_CONT_MASK = tuple(sum(0x80 << 8 * i for i in range(k)) for k in range(6))
_CONT_SET = tuple(sum(0x80 << 8 * i for i in range(k - 1)) for k in range(6))


def register_peer(data: bytes) -> tuple[str, int] | None:
    """``(id, serial)`` when ``data`` is a ``RendezvousMessage`` holding only a ``RegisterPeer``.

    None for anything else (another member, extra or unknown fields, repeated fields, fields
    out of order, non-minimal varints, bad UTF-8, truncation): then a full parse decides.
    Never raises.
    """
    n = len(data)
    # The usual heartbeat: one-byte lengths, an id, and a serial of 0 (omitted) to 127.
    if 4 <= n < 130 and data[0] == _OUTER and data[1] == n - 2 and data[2] == _ID:
        end = data[3] + 4
        if end == n:
            try:
                return data[4:end].decode("utf-8"), 0
            except UnicodeDecodeError:
                return None
        if end == n - 2 and data[end] == _SERIAL and data[end + 1] < 0x80:
            try:
                return data[4:end].decode("utf-8"), data[end + 1]
            except UnicodeDecodeError:
                return None
    return _general(data)


def _general(data: bytes) -> tuple[str, int] | None:
    """Any accepted encoding, including multi-byte lengths and serials."""
    n = len(data)
    if n < 2 or data[0] != _OUTER:
        return None
    size = data[1]
    pos = 2
    if size >= 0x80:  # two-byte length; longer messages never fit a heartbeat
        if n < 3:
            return None
        high = data[2]
        if high == 0 or high >= 0x80:
            return None
        size = (size & 0x7F) | high << 7
        pos = 3
    if pos + size != n:
        return None
    ident = ""
    if pos < n and data[pos] == _ID:
        if pos + 1 >= n:
            return None
        length = data[pos + 1]
        pos += 2
        if length >= 0x80:
            if pos >= n:
                return None
            high = data[pos]
            if high == 0 or high >= 0x80:
                return None
            length = (length & 0x7F) | high << 7
            pos += 1
        end = pos + length
        if end > n:
            return None
        try:
            ident = data[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        pos = end
    if pos == n:
        return ident, 0
    if data[pos] != _SERIAL:
        return None
    pos += 1
    # The serial is the last field, so its varint is the rest of the data: non-negative int32
    # values take 1-5 bytes, negative ones 10 (sign-extended to 64 bits).
    size = n - pos
    if 1 <= size <= 5:
        if size > 1 and data[n - 1] == 0:  # non-minimal
            return None
        raw = int.from_bytes(data[pos:n], "little")
        if raw & _CONT_MASK[size] != _CONT_SET[size]:
            return None
        value = _septets(raw)
        return (ident, value) if value <= _INT32_MAX else None
    if size == 10 and data[n - 5:] == _NEG_TAIL and data[pos + 4] & 0xF0 == 0xF0:
        raw = int.from_bytes(data[pos:pos + 4], "little")
        if raw & 0x80808080 != 0x80808080:
            return None
        value = _septets(raw) | (data[pos + 4] & 0x0F) << 28
        # Bit 31 set, as the sign extension above it says; else protobuf would truncate.
        return (ident, value - _U32) if value > _INT32_MAX else None
    return None


def _septets(raw: int) -> int:
    """The value of up to five little-endian varint bytes read as one integer."""
    return ((raw & 0x7F) | (raw >> 1 & 0x3F80) | (raw >> 2 & 0x1FC000)
            | (raw >> 3 & 0xFE00000) | (raw >> 4 & 0x7F0000000))
