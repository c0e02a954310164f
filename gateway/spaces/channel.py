"""Messages on a space's pub/sub channel (gateway ↔ gateway), msgpack arrays.

Each broadcast is serialised once by its origin: the channel carries the finished JSON frame and
every gateway with members in the space forwards those bytes to its own sockets.

* ``[FRAME, exclude_socket, frame]`` — send to every member (the sender too, as the original
  echoes broadcasts), except ``exclude_socket`` when it is not empty;
* ``[JOINED, playerId, exclude_socket, frame]`` / ``[LEFT, playerId, frame]`` — membership
  changes; receivers use the id to avoid double or stray notices around a join;
* ``[POSITIONS, gateway, records]`` — one tick's changed 21-byte records from one gateway;
* ``[PROBE, gateway, nonce]`` — lets a gateway see that its new subscription is live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack


__all__ = ["FRAME", "JOINED", "LEFT", "POSITIONS", "PROBE", "ChannelMessage", "decode", "encode"]

FRAME, JOINED, LEFT, POSITIONS, PROBE = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    kind: int
    player_id: int = -1
    exclude: str = ""
    frame: bytes = b""
    gateway: str = ""


def encode(msg: ChannelMessage) -> bytes:
    if msg.kind == FRAME:
        body: list[Any] = [FRAME, msg.exclude, msg.frame]
    elif msg.kind == JOINED:
        body = [JOINED, msg.player_id, msg.exclude, msg.frame]
    elif msg.kind == LEFT:
        body = [LEFT, msg.player_id, msg.frame]
    else:
        body = [msg.kind, msg.gateway, msg.frame]
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def decode(data: bytes) -> ChannelMessage | None:
    """Never raises: a malformed message is None."""
    try:
        body = msgpack.unpackb(data, raw=False)
        kind = body[0]
        if kind == FRAME:
            return ChannelMessage(FRAME, exclude=str(body[1]), frame=bytes(body[2]))
        if kind == JOINED:
            return ChannelMessage(JOINED, int(body[1]), str(body[2]), bytes(body[3]))
        if kind == LEFT:
            return ChannelMessage(LEFT, int(body[1]), frame=bytes(body[2]))
        if kind in (POSITIONS, PROBE):
            return ChannelMessage(kind, gateway=str(body[1]), frame=bytes(body[2]))
    except (ValueError, TypeError, IndexError, KeyError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError):
        return None
    return None
