"""msgpack envelopes for process inboxes.

An inbox message is a positional array ``[VERSION, kind, type, request_id, reply_to, sender,
payload]``: arrays decode faster than maps and the version lets a rolling upgrade refuse what it
cannot read instead of misreading it.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import msgpack


__all__ = ["Envelope", "Kind", "decode", "encode"]

VERSION = 1


class Kind(enum.IntEnum):
    SEND = 0
    REQUEST = 1
    REPLY_OK = 2
    REPLY_ERROR = 3


_KINDS = {int(k): k for k in Kind}


class Envelope(NamedTuple):
    # A tuple, not a frozen dataclass: built for every inbox message, at a quarter of the cost.
    kind: Kind
    type: str
    request_id: int
    reply_to: str
    sender: str
    payload: Any


def encode(env: Envelope) -> bytes:
    data: bytes = msgpack.packb(
        [VERSION, int(env.kind), env.type, env.request_id, env.reply_to, env.sender, env.payload],
        use_bin_type=True,
    )
    return data


def decode(data: bytes) -> Envelope | None:
    """Decode an envelope; ``None`` for anything malformed (inboxes drop garbage)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        version, kind, typ, request_id, reply_to, sender, payload = obj
        kind = _KINDS.get(kind) if type(kind) is int else None
        if version != VERSION or kind is None or not isinstance(typ, str):
            return None
        return Envelope(kind, typ, int(request_id), str(reply_to), str(sender), payload)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
        return None


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
