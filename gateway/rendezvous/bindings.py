"""News of binding changes, and the one rule for what gateways may keep about an ID.

A binding is the durable ``rd:peer:<id>`` record (device uuid, key, registered IP). It changes
when a device registers a new key or IP, when it changes its ID, when an operator removes it and
when ``import-hbbs --overwrite`` rewrites it. Its *generation* is a hash of its content (uuid,
key, IP: ``store.binding_gen``), so a new device, key or IP gives another generation, with
nothing stored (a changed ID keeps its content, hence its generation, under the new ID; the old
ID has no record at all). The store announces every change with a ``BindingChanged`` on the
channel ``rd:bindings`` as soon as the script that made it returns, before the caller answers
the device.

Invalidation rule for every local copy a gateway keeps about an ID (liveness heard here, and
any binding cache to come): an entry is stamped with the generation it was verified under and
is dropped as soon as

1. a ``BindingChanged`` names the ID with another generation, or
2. any read of the record (each punch or relay look-up reads it in the same round trip as the
   liveness; each liveness flush checks it in Redis) shows another generation or no record, or
3. its TTL ends.

Nothing is answered from a local entry whose generation was not confirmed by a read made for
that answer (except while Redis is unreachable, when no binding can change either), so a
missed message costs at most a stale heartbeat answer until the next flush (about 10 s), never
a wrong answer to a controller. Signed ``IdPk`` s are cached by (id, key), which is a pure
function of their inputs, so they need no invalidation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack


__all__ = ["BindingChanged", "KIND_KEY", "KIND_MOVED", "KIND_REMOVED", "VERSION"]

VERSION = 1
KIND_KEY = "key"
"""Registered (again) with another key or IP, or imported: same ID, new generation."""
KIND_MOVED = "moved"
"""Change ID: the binding (and its liveness) now lives under ``new_id``."""
KIND_REMOVED = "removed"
"""The binding and its liveness are gone."""
_KINDS = (KIND_KEY, KIND_MOVED, KIND_REMOVED)


@dataclass(frozen=True, slots=True)
class BindingChanged:
    """``[version, kind, id, new_id, generation]`` in msgpack, published by the store.

    ``gen`` is the generation now in force under ``new_id`` (moved: the same content, so the
    same generation it had under ``peer_id``) or ``peer_id`` (key); empty when removed.
    """

    kind: str
    peer_id: str
    new_id: str = ""
    gen: bytes = b""

    def pack(self) -> bytes:
        data: bytes = msgpack.packb([VERSION, self.kind, self.peer_id, self.new_id, self.gen])
        return data

    @classmethod
    def unpack(cls, blob: bytes) -> BindingChanged | None:
        """The message, or None for anything malformed or of another version."""
        try:
            raw: Any = msgpack.unpackb(blob, raw=True)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not isinstance(raw, list) or len(raw) < 5 or raw[0] != VERSION:
            return None
        kind, peer_id, new_id, gen = raw[1:5]
        if not all(isinstance(v, bytes) for v in (kind, peer_id, new_id, gen)):
            return None
        try:
            ev = cls(kind.decode(), peer_id.decode(), new_id.decode(), gen)
        except UnicodeDecodeError:
            return None
        if ev.kind not in _KINDS or not ev.peer_id or (ev.kind == KIND_MOVED and not ev.new_id):
            return None
        return ev
