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

_INT32_MAX = (1 << 31) - 1
# Varint bytes 6-10 of a negative int32: the 64-bit sign extension.
_NEG_TAIL = b"\xff\xff\xff\xff\x01"
_NEG_CHECK = 0xF080808080  # continuation bits of bytes 1-5 and bits 32-34 in byte 5
_BIT31 = 1 << 31
_U35 = 1 << 35  # five septets of a negative int32 hold its 35-bit two's complement
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
    # The usual heartbeat: an id of up to 123 bytes, so every length takes one byte.
    if 4 <= n < 130 and data[0] == _OUTER and data[1] == n - 2 and data[2] == _ID:
        end = data[3] + 4
        if end == n:  # serial 0, omitted
            serial = 0
        elif end == n - 2:  # serial 1-127
            if data[end] != _SERIAL or data[end + 1] >= 0x80:
                return None
            serial = data[end + 1]
        elif end < n - 2 and data[end] == _SERIAL:
            found = _serial(data, end + 1, n)
            if found is None:
                return None
            serial = found
        else:
            return None
        try:
            return data[4:end].decode("utf-8"), serial
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
    serial = _serial(data, pos + 1, n)
    return None if serial is None else (ident, serial)


def _serial(data: bytes, pos: int, n: int) -> int | None:
    """The int32 in the varint that fills ``data[pos:n]``; None unless minimal and in range.

    Non-negative values take 1-5 bytes, negative ones 10 (sign-extended to 64 bits).
    """
    size = n - pos
    first = data[pos] if size > 0 else 0x80
    if size == 1:
        return first if first < 0x80 else None
    if first < 0x80:
        return None
    if size == 2:
        last = data[pos + 1]
        return (first & 0x7F) | last << 7 if 0 < last < 0x80 else None
    if 3 <= size <= 5:
        if data[n - 1] == 0:  # non-minimal
            return None
        raw = int.from_bytes(data[pos:n], "little")
        if raw & _CONT_MASK[size] != _CONT_SET[size]:
            return None
        value = _septets(raw)
        return value if value <= _INT32_MAX else None
    if size == 10 and data[n - 5:] == _NEG_TAIL:
        raw = int.from_bytes(data[pos:n - 5], "little")
        # Bits 32-34 (in byte 5) set as the sign extension says; bit 31 too, or else
        # protobuf would truncate a value below INT32_MIN into a positive one.
        if raw & _NEG_CHECK != _NEG_CHECK:
            return None
        value = _septets(raw)
        return value - _U35 if value & _BIT31 else None
    return None


def _septets(raw: int) -> int:
    """The value of up to five little-endian varint bytes read as one integer."""
    return ((raw & 0x7F) | (raw >> 1 & 0x3F80) | (raw >> 2 & 0x1FC000)
            | (raw >> 3 & 0xFE00000) | (raw >> 4 & 0x7F0000000))
