"""Parse and build ``RendezvousMessage`` protobufs without ever raising on peer input."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from hubbub.wire.rustdesk import rendezvous_pb2 as pb


__all__ = ["kind", "message", "parse", "pb", "serialize"]


def parse(data: bytes) -> pb.RendezvousMessage | None:
    """The message in ``data``; None when it is not a valid ``RendezvousMessage``.

    Unknown fields are kept, so a parsed message re-serialises with fields from newer clients.
    """
    msg = pb.RendezvousMessage()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    return msg


def kind(msg: pb.RendezvousMessage) -> str:
    """The name of the oneof member set (``""`` for an empty message)."""
    return msg.WhichOneof("union") or ""


def serialize(msg: pb.RendezvousMessage) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def message(**member: Any) -> bytes:
    """The bytes of a ``RendezvousMessage`` with one member set, e.g. ``message(hc=...)``."""
    return serialize(pb.RendezvousMessage(**member))
