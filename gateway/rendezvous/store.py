"""Redis state of the ID server.

Durable (no TTL, kept by AOF):
    ``rd:peer:<id>``   hash ``u`` uuid, ``k`` Ed25519 pk, ``ip`` last registered IP text;
                       its *generation* is a hash of those three (``binding_gen``), so it
                       changes with every change of the binding and costs no storage
    ``rd:idhist``      list of ID changes ``"<old> <new> <unix time>"`` (newest first, capped)
    ``rd:admin``       hash of run-time settings changed by ``hubbub admin``
Volatile:
    ``rd:live:<id>``   msgpack ``[ip, port, seen, owner, local_port, mode]`` (ip "" = the
                       registered IP, which is nearly always the case) with a TTL that ends
                       when the peer counts as offline; written in batches, only when the address
                       or owner changes or the TTL needs extending
    ``rd:sink:<addr>`` id of the gateway process holding controller ``addr``'s connection
Channel:
    ``rd:bindings``    a ``BindingChanged`` for every change of a binding, published as soon as
                       its script returns, before the caller answers (see
                       ``gateway.rendezvous.bindings``)

Ownership checks run as Lua scripts so two gateways can never bind one ID to two devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gateway.rendezvous.bindings import KIND_KEY, KIND_MOVED, KIND_REMOVED, BindingChanged
from hubbub.errors import RegistryUnavailable
from registry import Registry


__all__ = ["Live", "PeerRecord", "Store", "MODE_STREAM", "MODE_UDP", "ONLINE_WINDOW"]

ONLINE_WINDOW = 30.0
"""A peer is online while its last accepted registration is younger than this (hbbs)."""

MODE_UDP = 0
MODE_STREAM = 1
SINK_TTL = 35
REDIS_CONCURRENCY = 32
"""Redis commands in flight per process for the ID server."""
IDHIST_MAX = 10_000

REG_OK_SAME = 0
REG_OK_CHANGED = 1
REG_UUID_MISMATCH = 2

CHANGE_OK = 0
CHANGE_NOT_OWNER = 2
CHANGE_EXISTS = 3

# The scripts' copy of ``binding_gen``: the first 16 hex digits of SHA-1(uuid NUL pk NUL ip).
_GEN_LUA = """
local function gen(u, k, ip)
  return string.sub(redis.sha1hex(u .. '\\0' .. (k or '') .. '\\0' .. (ip or '')), 1, 16)
end
"""

# The news of a change is published from here, not from the scripts: a PUBLISH in a script
# leaves Redis's cached script arguments oversized, and the next keys written inherit the
# slack (measured: +16 B on every liveness key).
_REGISTER_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip')
local res = 0
if not cur[1] then
  redis.call('HSET', KEYS[1], 'u', ARGV[1], 'k', ARGV[2], 'ip', ARGV[3])
  res = 1
else
  if cur[1] ~= ARGV[1] then return 2 end
  if cur[3] ~= ARGV[3] and cur[2] ~= ARGV[2] then return 2 end
  if cur[2] ~= ARGV[2] or cur[3] ~= ARGV[3] then
    redis.call('HSET', KEYS[1], 'k', ARGV[2], 'ip', ARGV[3])
    res = 1
  end
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return res
"""

# The liveness moves with the binding: the device is reachable under its new ID at once,
# through whichever gateway hears it, before it re-registers.
_CHANGE_LUA = _GEN_LUA + """
local old = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip')
if not old[1] or old[1] ~= ARGV[1] then return {2, ''} end
local g = gen(old[1], old[2], old[3])
if KEYS[1] == KEYS[2] then return {0, g} end
local other = redis.call('HGET', KEYS[2], 'u')
if other and other ~= ARGV[1] then return {3, ''} end
redis.call('HSET', KEYS[2], 'u', old[1], 'k', old[2] or '', 'ip', old[3] or '')
local live = redis.call('GET', KEYS[3])
local ttl = redis.call('PTTL', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[3])
if live and ttl > 0 then redis.call('SET', KEYS[5], live, 'PX', ttl) end
redis.call('LPUSH', KEYS[4], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
return {0, g}
"""

_REMOVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# A gateway's liveness write counts only while the binding it heard the peer under stands:
# a removed, moved or re-keyed ID never gets liveness back from a gateway that missed the news.
_FLUSH_LUA = _GEN_LUA + """
local cur = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip')
if not cur[1] or gen(cur[1], cur[2], cur[3]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Delete a liveness record only if the given gateway still owns it, in one step: a peer that
# has just moved to another gateway keeps the record that gateway wrote.
_DROP_LIVE_LUA = """
local blob = redis.call('GET', KEYS[1])
if not blob then return 0 end
local ok, rec = pcall(cmsgpack.unpack, blob)
if ok and type(rec) == 'table' and rec[4] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_IMPORT_LUA = """
if ARGV[4] == '1' or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'u', ARGV[1], 'k', ARGV[2], 'ip', ARGV[3])
  return 1
end
return 0
"""


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


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Store:
    """Rendezvous keys in Redis; every call may raise ``RegistryUnavailable``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.redis = registry.redis
        # The shared client has a bounded connection pool (other capabilities use it too):
        # bursts wait here instead of failing with "too many connections".
        self.gate = asyncio.Semaphore(REDIS_CONCURRENCY)
        # Binding writes are answered only once the replicas hold them (REDIS_MIN_REPLICAS).
        self._register = registry.durable_script(_REGISTER_LUA)
        self._change = registry.durable_script(_CHANGE_LUA)
        self._import = registry.durable_script(_IMPORT_LUA)
        self._remove = registry.durable_script(_REMOVE_LUA)
        self._flush_bound = self.redis.register_script(_FLUSH_LUA)
        self._flush_loaded = False
        self._drop_live = self.redis.register_script(_DROP_LIVE_LUA)

    # Every ID-server key carries one slot tag: a change of ID moves a binding between two
    # IDs (and the history) in one script, which Redis Cluster allows only within one slot.
    def peer_key(self, peer_id: str) -> str:
        return self.registry.key(self.registry.tag("rd"), "peer", peer_id)

    def live_key(self, peer_id: str) -> str:
        return self.registry.key(self.registry.tag("rd"), "live", peer_id)

    def sink_key(self, addr: str) -> str:
        return self.registry.key(self.registry.tag("rd"), "sink", addr)

    @property
    def admin_key(self) -> str:
        return self.registry.key(self.registry.tag("rd"), "admin")

    @property
    def admin_channel(self) -> str:
        return self.registry.key("rd", "admin-changed")

    @property
    def bindings_channel(self) -> str:
        return self.registry.key("rd", "bindings")

    async def _announce(self, news: BindingChanged) -> None:
        """Tell every gateway (awaited before the caller answers). Best effort: a gateway that
        misses it still never serves the old binding (see ``gateway.rendezvous.bindings``)."""
        with contextlib.suppress(RegistryUnavailable):
            async with self.gate:
                await self.registry.publish(self.bindings_channel, news.pack(), broadcast=True)

    @property
    def idhist_key(self) -> str:
        return self.registry.key(self.registry.tag("rd"), "idhist")

    # ------------------------------------------------------------- peers
    async def register(self, peer_id: str, uuid: bytes, pk: bytes, ip: str,
                       live: Live) -> tuple[int, bytes]:
        """Bind ``peer_id`` to ``uuid``/``pk``: (REG_OK_SAME, REG_OK_CHANGED or
        REG_UUID_MISMATCH, the binding's generation).

        On success the liveness record is written in the same step, so every gateway can reach
        the peer as soon as it has its answer.
        """
        async with self.gate, self.registry.guard("rd_register"):
            res = int(await self._register(
                keys=[self.peer_key(peer_id), self.live_key(peer_id)],
                args=[uuid, pk, ip, live.pack(), int(ONLINE_WINDOW * 1000)]))
        gen = binding_gen(uuid, pk, ip.encode())
        if res == REG_OK_CHANGED:
            await self._announce(BindingChanged(KIND_KEY, peer_id, "", gen))
        return res, gen

    async def register_pk(self, peer_id: str, uuid: bytes, pk: bytes, ip: str,
                          live: Live) -> int:
        """``register`` without the generation."""
        return (await self.register(peer_id, uuid, pk, ip, live))[0]

    async def move_id(self, old_id: str, new_id: str, uuid: bytes) -> tuple[int, bytes]:
        """Move ``old_id``'s binding and liveness to ``new_id``: (CHANGE_* result, the
        binding's generation)."""
        async with self.gate, self.registry.guard("rd_change_id"):
            res: Any = await self._change(
                keys=[self.peer_key(old_id), self.peer_key(new_id), self.live_key(old_id),
                      self.idhist_key, self.live_key(new_id)],
                args=[uuid, old_id, new_id, int(time.time()), IDHIST_MAX])
        result, gen = int(res[0]), bytes(res[1] or b"")
        if result == CHANGE_OK and old_id != new_id:
            await self._announce(BindingChanged(KIND_MOVED, old_id, new_id, gen))
        return result, gen

    async def change_id(self, old_id: str, new_id: str, uuid: bytes) -> int:
        """``move_id`` without the generation."""
        return (await self.move_id(old_id, new_id, uuid))[0]

    async def remove_peer(self, peer_id: str) -> bool:
        """Forget ``peer_id``'s binding and liveness; False when it was not bound."""
        async with self.gate, self.registry.guard("rd_remove"):
            res = await self._remove(keys=[self.peer_key(peer_id), self.live_key(peer_id)],
                                     args=[])
        if res:
            await self._announce(BindingChanged(KIND_REMOVED, peer_id))
        return bool(res)

    async def import_peer(self, peer_id: str, uuid: bytes, pk: bytes, ip: str,
                          overwrite: bool) -> bool:
        async with self.gate, self.registry.guard("rd_import"):
            res = await self._import(keys=[self.peer_key(peer_id)],
                                     args=[uuid, pk, ip, "1" if overwrite else "0"])
        if res:
            await self._announce(BindingChanged(KIND_KEY, peer_id, "",
                                                binding_gen(uuid, pk, ip.encode())))
        return bool(res)

    async def peer(self, peer_id: str) -> PeerRecord | None:
        async with self.gate, self.registry.guard("rd_peer"):
            row: Any = await self.redis.hmget(self.peer_key(peer_id), ["u", "k", "ip"])
        return PeerRecord.from_row(row)

    async def lookup(self, peer_id: str, sink: tuple[str, str] | None = None
                     ) -> tuple[PeerRecord | None, Live | None]:
        """The durable record and the liveness of one peer in one round trip.

        ``sink`` = ``(A's address, holder process id)`` is recorded in the same round trip.
        """
        async with self.gate, self.registry.guard("rd_lookup"):
            async with self.redis.pipeline(transaction=False) as p:
                if sink is not None:
                    p.set(self.sink_key(sink[0]), sink[1], ex=SINK_TTL)
                p.hmget(self.peer_key(peer_id), ["u", "k", "ip"])
                p.get(self.live_key(peer_id))
                res = await p.execute()
        rec, live = PeerRecord.from_row(res[-2]), Live.unpack(res[-1])
        if live is not None and not live.ip:
            if rec is None or not rec.ip:
                return rec, None
            live = dataclasses.replace(live, ip=rec.ip)
        return rec, live

    async def lives(self, ids: Sequence[str]) -> list[Live | None]:
        if not ids:
            return []
        async with self.gate, self.registry.guard("rd_online"):
            blobs: list[Any] = await self.redis.mget([self.live_key(i) for i in ids])
        return [Live.unpack(b) for b in blobs]

    async def flush_live(self, items: Iterable[tuple[str, Live]], now: float) -> int:
        """Write liveness records in one pipeline; each expires when the peer goes offline."""
        n = 0
        async with self.gate, self.registry.guard("rd_flush"):
            async with self.redis.pipeline(transaction=False) as p:
                for peer_id, live in items:
                    ttl_ms = int((ONLINE_WINDOW - (now - live.seen)) * 1000)
                    if ttl_ms <= 0:
                        continue
                    p.set(self.live_key(peer_id), live.pack(), px=ttl_ms)
                    n += 1
                if n:
                    await p.execute()
        return n

    async def flush_bound(self, items: Sequence[tuple[str, Live, bytes]], now: float
                          ) -> tuple[int, list[str]]:
        """``flush_live`` for peers heard under binding generation ``gen`` (third item): a
        record is written only while that generation stands. Returns (written, refused IDs)."""
        todo = [(pid, live, gen, int((ONLINE_WINDOW - (now - live.seen)) * 1000))
                for pid, live, gen in items]
        todo = [t for t in todo if t[3] > 0]
        if not todo:
            return 0, []
        async with self.gate:
            if not self._flush_loaded:
                # A cluster pipeline does not load scripts itself (nor has a promoted replica
                # them): load on every primary first, and again after a NOSCRIPT.
                async with self.registry.guard("script_load"):
                    await self.redis.script_load(_FLUSH_LUA)
                self._flush_loaded = True
            try:
                async with self.registry.guard("rd_flush"):
                    async with self.redis.pipeline(transaction=False) as p:
                        for pid, live, gen, ttl_ms in todo:
                            await self._flush_bound(
                                keys=[self.peer_key(pid), self.live_key(pid)],
                                args=[gen, live.pack(), ttl_ms], client=p)
                        res = await p.execute()
            except RegistryUnavailable as exc:
                if "NOSCRIPT" in str(exc) or "No matching script" in str(exc):
                    self._flush_loaded = False  # the caller retries the batch
                raise
        refused = [t[0] for t, ok in zip(todo, res, strict=True) if not ok]
        return len(todo) - len(refused), refused

    async def drop_live(self, peer_id: str, owner: str) -> bool:
        """Forget a stream-mode peer whose connection closed, only if ``owner`` still owns it;
        True when it was forgotten."""
        async with self.gate, self.registry.guard("rd_drop"):
            n: Any = await self._drop_live(keys=[self.live_key(peer_id)], args=[owner])
        return bool(n)

    # ------------------------------------------------------------- sinks
    async def sink_owner(self, addr: str) -> str | None:
        async with self.gate, self.registry.guard("rd_sink"):
            owner: Any = await self.redis.get(self.sink_key(addr))
        return None if owner is None else bytes(owner).decode()

    # ------------------------------------------------------------- admin
    async def admin_settings(self) -> dict[str, str]:
        async with self.gate, self.registry.guard("rd_admin"):
            raw: dict[Any, Any] = await self.redis.hgetall(self.admin_key)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def set_admin(self, name: str, value: str | None) -> None:
        def change(p: Any) -> None:
            if value is None:
                p.hdel(self.admin_key, name)
            else:
                p.hset(self.admin_key, name, value)
        async with self.gate:
            await self.registry.durable(self.admin_key, change)
            # Every gateway listens (a broadcast channel in every deployment mode).
            await self.registry.publish(self.admin_channel, name.encode(), broadcast=True)

    async def id_history(self, count: int = 100) -> list[str]:
        async with self.gate, self.registry.guard("rd_admin"):
            raw: Any = await self.redis.lrange(self.idhist_key, 0, count - 1)
        return [bytes(r).decode(errors="replace") for r in raw]
