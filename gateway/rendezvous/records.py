"""What the ID server knows of a peer, as plain values (no I/O): its durable binding, its
liveness record and the binding's generation (see ``gateway.rendezvous.bindings``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack


__all__ = ["Live", "MODE_STREAM", "MODE_UDP", "ONLINE_WINDOW", "PeerRecord", "binding_gen"]

ONLINE_WINDOW = 30.0
"""A peer is online while its last accepted registration is younger than this (hbbs)."""

MODE_UDP = 0
MODE_STREAM = 1


@dataclass(frozen=True, slots=True)
class Live:
    """Where and through whom a peer can be reached."""

    ip: str
    port: int
    seen: float
    owner: str  # token (last part of the process id) of the gateway that last heard the peer
    local_port: int  # the gateway's UDP port the peer talks to
    mode: int  # MODE_UDP or MODE_STREAM

    def pack(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.ip, self.port, int(self.seen), self.owner, self.local_port, self.mode])
        return data

    @classmethod
    def unpack(cls, blob: bytes | None) -> Live | None:
        if not blob:
            return None
        try:
            ip, port, seen, owner, local_port, mode = msgpack.unpackb(blob)
            return cls(str(ip), int(port), float(seen), str(owner), int(local_port), int(mode))
        except (ValueError, TypeError, msgpack.UnpackException):
            return None

    def online(self, now: float) -> bool:
        return now - self.seen < ONLINE_WINDOW


@dataclass(frozen=True, slots=True)
class PeerRecord:
    uuid: bytes
    pk: bytes
    ip: str
    gen: bytes = b""  # binding_gen of the three above

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> PeerRecord | None:
        """The record in an ``HMGET u k ip`` reply; None when the ID is not bound."""
        u, k, ip = row
        if u is None:
            return None
        u, k, ip = bytes(u), bytes(k or b""), bytes(ip or b"")
        return cls(u, k, ip.decode(errors="replace"), binding_gen(u, k, ip))


def binding_gen(uuid: bytes, pk: bytes, ip: bytes) -> bytes:
    """A binding's generation: a hash of its content, so any change of it (new device, key or
    IP) gives another one. The scripts compute the same (``_GEN_LUA``)."""
    return hashlib.sha1(uuid + b"\0" + pk + b"\0" + ip, usedforsecurity=False
                        ).hexdigest()[:16].encode()
