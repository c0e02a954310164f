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

_U64 = 1 << 64
_INT32_MAX = (1 << 31) - 1
_NEG_MIN = _U64 - (1 << 31)  # the 64-bit two's complement of INT32_MIN


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
    # A varint of at most ten bytes; non-negative int32 values take 1-5, negative ones 10.
    value = 0
    shift = 0
    while True:
        if pos >= n or shift > 63:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if pos != n or (byte == 0 and shift):  # trailing fields, or a non-minimal varint
        return None
    if value <= _INT32_MAX:
        return ident, value
    if _NEG_MIN <= value < _U64:
        return ident, value - _U64
    return None
