"""Location records and the server-batched position message.

A location record is the Wired client's 21-byte data-channel message: byte 0 the sender's
playerId, then position x, y, z as little-endian Int32 (metres × 100000) and the rotation
quaternion x, y, z, w as little-endian Int16 (× 10000). The host treats bytes 1..20 as opaque.

hubbub extension for clients without WebRTC: a client sends its record as a *binary* WebSocket
frame; the server overwrites byte 0 with the sender's real playerId. Once per tick (15 Hz) every
opted-in member receives one binary frame::

    byte 0      BATCH_VERSION (0x01)
    bytes 1..   N × 21-byte records, each the latest record of one player that changed

A player appears at most once per batch; a batch is never empty (no changes, no frame).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass


__all__ = [
    "BATCH_VERSION",
    "RECORD_SIZE",
    "Location",
    "decode_batch",
    "decode_record",
    "encode_batch",
    "encode_record",
    "stamp",
]

RECORD_SIZE = 21
BATCH_VERSION = 0x01
POSITION_SCALE = 100000
ROTATION_SCALE = 10000
MAX_RECORDS = 256
"""At most one record per playerId."""

_RECORD = struct.Struct("<B3i4h")


@dataclass(frozen=True, slots=True)
class Location:
    player_id: int
    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float]


def encode_record(loc: Location) -> bytes:
    """Quantise a location exactly as the reference client does (values are clamped)."""
    def q32(v: float) -> int:
        return max(-(2**31), min(2**31 - 1, round(v * POSITION_SCALE)))

    def q16(v: float) -> int:
        return max(-(2**15), min(2**15 - 1, round(v * ROTATION_SCALE)))

    return _RECORD.pack(loc.player_id & 0xFF, *(q32(v) for v in loc.position),
                        *(q16(v) for v in loc.rotation))


def decode_record(record: bytes) -> Location | None:
    if len(record) != RECORD_SIZE:
        return None
    pid, x, y, z, qx, qy, qz, qw = _RECORD.unpack(record)
    return Location(pid, (x / POSITION_SCALE, y / POSITION_SCALE, z / POSITION_SCALE),
                    (qx / ROTATION_SCALE, qy / ROTATION_SCALE, qz / ROTATION_SCALE,
                     qw / ROTATION_SCALE))


def stamp(record: bytes, player_id: int) -> bytes | None:
    """The record with byte 0 set to ``player_id``; None if it is not exactly 21 bytes."""
    if len(record) != RECORD_SIZE or not 0 <= player_id <= 255:
        return None
    return bytes((player_id,)) + bytes(record[1:])


def encode_batch(records: Iterable[bytes]) -> bytes:
    """One batch frame from already-stamped 21-byte records."""
    return bytes((BATCH_VERSION,)) + b"".join(records)


def decode_batch(frame: bytes) -> list[bytes] | None:
    """The records of a batch frame; None if the frame is not a version-1 batch."""
    if not frame or frame[0] != BATCH_VERSION or (len(frame) - 1) % RECORD_SIZE:
        return None
    n = (len(frame) - 1) // RECORD_SIZE
    if n > MAX_RECORDS:
        return None
    return [bytes(frame[1 + i * RECORD_SIZE:1 + (i + 1) * RECORD_SIZE]) for i in range(n)]
