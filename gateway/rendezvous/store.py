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
In Cluster mode the per-peer keys carry the peer's own hash tag (``rd:peer:{<id>}``,
``rd:live:{<id>}``, ``rd:sink:{<addr>}``), so peers spread over every primary; the shared keys
(``{rd}:idhist``, ``{rd}:admin``) keep one tag. Elsewhere the names are exactly the above.
While a change of ID is under way (Cluster mode only, see ``Store._move_steps``) the old record
has ``mv`` = the new ID and the new one ``from`` = the old ID.
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
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.rendezvous.bindings import KIND_KEY, KIND_MOVED, KIND_REMOVED, BindingChanged
from gateway.rendezvous.records import (
    ONLINE_WINDOW,
    Live,
    PeerRecord,
    binding_gen,
)
from hubbub.contracts.rendezvous import AdminSettingsChanged
from hubbub.errors import RegistryUnavailable
from registry import Registry


__all__ = ["CHANGE_EXISTS", "CHANGE_NOT_OWNER", "CHANGE_OK", "REG_OK_CHANGED", "REG_OK_SAME",
           "REG_UUID_MISMATCH", "Store"]

SINK_TTL = 35
REDIS_CONCURRENCY = 32
"""Redis commands in flight per process for the ID server."""
IDHIST_MAX = 10_000

REG_OK_SAME = 0
REG_OK_CHANGED = 1
REG_UUID_MISMATCH = 2
_REG_OK_NEW = 3

_NO_CLAIM, _COMMITTED, _ABORTED, _PENDING = range(4)

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
local cur = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip', 'from')
local res = 0
if cur[4] then return -1 end
if not cur[1] then
  redis.call('HSET', KEYS[1], 'u', ARGV[1], 'k', ARGV[2], 'ip', ARGV[3])
  res = 3
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

# Cluster mode: a change of ID in ordered steps, each one script on one slot (see
# ``Store._move_steps``). Mark: the old record names the new ID (``mv``) and hands back the
# binding and liveness to copy.
_MARK_LUA = _GEN_LUA + """
local old = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip', 'mv')
if not old[1] or old[1] ~= ARGV[1] then return {2, '', '', '', '', 0, ''} end
redis.call('HSET', KEYS[1], 'mv', ARGV[2])
local live = redis.call('GET', KEYS[2]) or ''
local ttl = redis.call('PTTL', KEYS[2])
return {0, gen(old[1], old[2], old[3]), old[2] or '', old[3] or '', live, ttl, old[4] or ''}
"""

# Claim: the new record gets the binding with ``from`` = the old ID (not bound yet: it counts
# only once the old record is gone). 3 = held by another device, 4 = held by an unfinished
# claim of another device that must be resolved first.
_CLAIM_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'from')
if cur[1] and cur[1] ~= ARGV[1] then
  if cur[2] then return 4 end
  return 3
end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'k', ARGV[2], 'ip', ARGV[3], 'from', ARGV[4])
if ARGV[5] ~= '' and tonumber(ARGV[6]) > 0 then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
end
return 0
"""

# Commit (or abort with ARGV[3] = '0'): the one atomic decision, on the old record, taken only
# while it still names this move.
_DECIDE_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'mv')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('HDEL', KEYS[1], 'mv')
end
return 1
"""

# Settle the new record once the decision is known: keep it (drop ``from``) or delete it;
# only while it is still the claim of that device from that old ID.
_SETTLE_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'from')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], 'from')
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""

_IDHIST_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
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

# A punch's look-up in one command (one slot: not in Cluster mode): record A's sink (when given),
# then B's binding fields and liveness record.
_LOOKUP_LUA = """
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
local cur = redis.call('HMGET', KEYS[1], 'u', 'k', 'ip', 'from')
return {cur[1], cur[2], cur[3], cur[4], redis.call('GET', KEYS[2])}
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
        self._register = registry.durable_script(_REGISTER_LUA, batch=True)
        self._change = registry.durable_script(_CHANGE_LUA)
        self._import = registry.durable_script(_IMPORT_LUA)
        self._remove = registry.durable_script(_REMOVE_LUA)
        self._flush_bound = self.redis.register_script(_FLUSH_LUA)
        self._flush_loaded = False
        self._drop_live = self.redis.register_script(_DROP_LIVE_LUA)
        self._lookup = self.redis.register_script(_LOOKUP_LUA)
        self._mark = registry.durable_script(_MARK_LUA)
        self._claim = registry.durable_script(_CLAIM_LUA)
        self._decide = registry.durable_script(_DECIDE_LUA)
        self._settle = registry.durable_script(_SETTLE_LUA)
        self._idhist = registry.durable_script(_IDHIST_LUA)
        # Cluster mode: every peer has its own slot (tag = its ID), so the ID server's keys
        # spread over every primary; elsewhere ``tag`` is the bare value and names stay as
        # documented above.
        self.sharded = registry.tag("rd") != "rd"

    # A peer's two keys share its own tag (its scripts touch both); a change of ID spans two
    # slots in Cluster mode and runs as ordered steps (``_move_steps``).
    def peer_key(self, peer_id: str) -> str:
        return self.registry.key("rd", "peer", self.registry.tag(peer_id))

    def live_key(self, peer_id: str) -> str:
        return self.registry.key("rd", "live", self.registry.tag(peer_id))

    def sink_key(self, addr: str) -> str:
        return self.registry.key("rd", "sink", self.registry.tag(addr))

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
                await self.registry.publish(self.bindings_channel, news.encode(), broadcast=True)

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
        for attempt in range(2):
            async with self.gate, self.registry.guard("rd_register"):
                res = int(await self._register(
                    keys=[self.peer_key(peer_id), self.live_key(peer_id)],
                    args=[uuid, pk, ip, live.pack(), int(ONLINE_WINDOW * 1000)]))
            if res >= 0:
                break
            if attempt or await self._resolve_claim(peer_id) == _PENDING:
                # A change of ID to this ID is still deciding: not bound to anyone yet.
                return REG_UUID_MISMATCH, b""
        gen = binding_gen(uuid, pk, ip.encode())
        if res == _REG_OK_NEW:
            # A first binding needs no news: a gateway keeps nothing about an ID that had
            # none (what it knew of an earlier one went with that one's removal or move).
            return REG_OK_CHANGED, gen
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
        if self.sharded and old_id != new_id:
            result, gen = await self._move_steps(old_id, new_id, uuid)
        else:
            async with self.gate, self.registry.guard("rd_change_id"):
                res: Any = await self._change(
                    keys=[self.peer_key(old_id), self.peer_key(new_id), self.live_key(old_id),
                          self.idhist_key, self.live_key(new_id)],
                    args=[uuid, old_id, new_id, int(time.time()), IDHIST_MAX])
            result, gen = int(res[0]), bytes(res[1] or b"")
        if result == CHANGE_OK and old_id != new_id:
            await self._announce(BindingChanged(KIND_MOVED, old_id, new_id, gen))
        return result, gen

    async def _move_steps(self, old_id: str, new_id: str, uuid: bytes) -> tuple[int, bytes]:
        """Cluster mode: move a binding between two slots in ordered steps, each one durable
        script on one slot. Invariant: at every moment exactly one of the two IDs is bound,
        and the old record decides which: the new record (written with ``from`` = old ID)
        counts as bound only once the old record is gone.

        1. mark   (old slot): old gets ``mv`` = new ID; it stays bound.
        2. claim  (new slot): new gets the binding + ``from`` and the liveness; not bound yet.
        3. commit (old slot): old deleted if it still names this move: new is bound now.
        4. settle (new slot): ``from`` dropped; then the history line and the news.

        Crash (or Redis error) after 1: old bound with a stale ``mv``, which only a later
        change of ID or a removal reads: either aborts it and deletes its claim before the
        old record can go. After 2: old still bound; the new record is an
        unfinished claim; whoever reads it (a look-up, a registration, another device's claim)
        resolves it from the old record: pending (old holds the device and names this ID) =
        not bound, aborted (old holds the device, names no such move) = deleted, committed
        (old no longer holds the device) = kept. After
        3: the new ID is bound, its ``from`` dropped by the first reader. After 4: only the
        history line is missing. The device is answered OK only after 4, and a retry of the
        same change runs the steps again (each is idempotent), so an acknowledged binding
        is never lost; a device that was answered an error keeps using its old ID, which
        stays bound until a change commits.
        """
        async with self.gate, self.registry.guard("rd_change_id"):
            m: Any = await self._mark(keys=[self.peer_key(old_id), self.live_key(old_id)],
                                      args=[uuid, new_id])
        if int(m[0]) != CHANGE_OK:
            return CHANGE_NOT_OWNER, b""
        gen, pk, ip, live, ttl = bytes(m[1]), bytes(m[2]), bytes(m[3]), bytes(m[4]), int(m[5])
        earlier = _text(m[6])
        if earlier and earlier != new_id:
            # The mark aborted an earlier unfinished move: delete its claim before this one
            # can commit (the old record's deletion would otherwise make it count as bound).
            await self._resolve_claim(earlier)
        for attempt in range(2):
            async with self.gate, self.registry.guard("rd_change_id"):
                c = int(await self._claim(
                    keys=[self.peer_key(new_id), self.live_key(new_id)],
                    args=[uuid, pk, ip, old_id, live, max(ttl, 0)]))
            if c == 4 and not attempt and await self._resolve_claim(new_id) != _PENDING:
                continue
            break
        if c != CHANGE_OK:
            async with self.gate, self.registry.guard("rd_change_id"):
                await self._decide(keys=[self.peer_key(old_id), self.live_key(old_id)],
                                   args=[uuid, new_id, "0"])
            return CHANGE_EXISTS, b""
        async with self.gate, self.registry.guard("rd_change_id"):
            done = int(await self._decide(keys=[self.peer_key(old_id), self.live_key(old_id)],
                                          args=[uuid, new_id, "1"]))
        if not done:
            # Another change of the old ID overtook this one: it decided, not us.
            await self._resolve_claim(new_id)
            raise RegistryUnavailable("change of id overtaken by another")
        async with self.gate, self.registry.guard("rd_change_id"):
            await self._settle(keys=[self.peer_key(new_id), self.live_key(new_id)],
                               args=[uuid, old_id, "1"])
            await self._idhist(keys=[self.idhist_key],
                               args=[f"{old_id} {new_id} {int(time.time())}", IDHIST_MAX])
        return CHANGE_OK, gen

    async def _resolve_claim(self, peer_id: str) -> int:
        """Settle an unfinished claim of ``peer_id`` (see ``_move_steps``) from its old
        record: _COMMITTED (kept), _ABORTED (deleted), _PENDING (left) or _NO_CLAIM."""
        async with self.gate, self.registry.guard("rd_resolve"):
            row: Any = await self.redis.hmget(self.peer_key(peer_id), ["u", "from"])
            if row[0] is None or row[1] is None:
                return _NO_CLAIM
            u, old = bytes(row[0]), _text(row[1])
            orow: Any = await self.redis.hmget(self.peer_key(old), ["u", "mv"])
        # The old record no longer holds this device: the commit deleted it (or an operator
        # removed it). Still held: pending while it names this ID, aborted otherwise.
        if orow[0] is None or bytes(orow[0]) != u:
            verdict = _COMMITTED
        elif orow[1] is not None and _text(orow[1]) == peer_id:
            return _PENDING
        else:
            verdict = _ABORTED
        async with self.gate, self.registry.guard("rd_resolve"):
            await self._settle(keys=[self.peer_key(peer_id), self.live_key(peer_id)],
                               args=[u, old, "1" if verdict == _COMMITTED else "0"])
        return verdict

    async def change_id(self, old_id: str, new_id: str, uuid: bytes) -> int:
        """``move_id`` without the generation."""
        return (await self.move_id(old_id, new_id, uuid))[0]

    async def remove_peer(self, peer_id: str) -> bool:
        """Forget ``peer_id``'s binding and liveness; False when it was not bound."""
        if self.sharded:
            # An unfinished move from this ID: abort it and delete its claim first.
            async with self.gate, self.registry.guard("rd_remove"):
                row: Any = await self.redis.hmget(self.peer_key(peer_id), ["u", "mv"])
                if row[0] is not None and row[1] is not None:
                    await self._decide(keys=[self.peer_key(peer_id), self.live_key(peer_id)],
                                       args=[row[0], row[1], "0"])
            if row[0] is not None and row[1] is not None:
                await self._resolve_claim(_text(row[1]))
            if await self.peer(peer_id) is None:
                return False  # an unfinished claim, now resolved, or no record
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
        for _ in range(2):
            async with self.gate, self.registry.guard("rd_peer"):
                row: Any = await self.redis.hmget(self.peer_key(peer_id),
                                                  ["u", "k", "ip", "from"])
            if row[3] is None:
                break
            if await self._resolve_claim(peer_id) == _PENDING:
                return None
        return PeerRecord.from_row(row[:3])

    async def lookup(self, peer_id: str, sink: tuple[str, str] | None = None,
                     resolve: bool = True) -> tuple[PeerRecord | None, Live | None]:
        """The durable record and the liveness of one peer in one round trip.

        ``sink`` = ``(A's address, holder process id)`` is recorded in the same round trip.
        """
        async with self.gate, self.registry.guard("rd_lookup"):
            if not self.sharded:
                keys = [self.peer_key(peer_id), self.live_key(peer_id)]
                args: list[Any] = []
                if sink is not None:
                    keys.append(self.sink_key(sink[0]))
                    args = [sink[1], SINK_TTL]
                row = await self._lookup(keys=keys, args=args)
                res = [row[:4], row[4]]
            else:
                async with self.redis.pipeline(transaction=False) as p:
                    if sink is not None:
                        p.set(self.sink_key(sink[0]), sink[1], ex=SINK_TTL)
                    p.hmget(self.peer_key(peer_id), ["u", "k", "ip", "from"])
                    p.get(self.live_key(peer_id))
                    res = await p.execute()
        if res[-2][3] is not None:
            # An unfinished change of ID to this one (Cluster mode): resolve, read again.
            if not resolve or await self._resolve_claim(peer_id) == _PENDING:
                return None, None
            return await self.lookup(peer_id, resolve=False)
        rec, live = PeerRecord.from_row(res[-2][:3]), Live.unpack(res[-1])
        if live is not None and not live.ip:
            if rec is None or not rec.ip:
                return rec, None
            live = dataclasses.replace(live, ip=rec.ip)
        return rec, live

    async def lives(self, ids: Sequence[str]) -> list[Live | None]:
        if not ids:
            return []
        async with self.gate, self.registry.guard("rd_online"):
            if self.sharded:
                # Keys on many slots: one GET per key, grouped per primary by the pipeline.
                async with self.redis.pipeline(transaction=False) as p:
                    for i in ids:
                        p.get(self.live_key(i))
                    blobs: list[Any] = await p.execute()
            else:
                blobs = await self.redis.mget([self.live_key(i) for i in ids])
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
            await self.registry.publish(self.admin_channel, AdminSettingsChanged(name).encode(),
                                        broadcast=True)

    async def id_history(self, count: int = 100) -> list[str]:
        async with self.gate, self.registry.guard("rd_admin"):
            raw: Any = await self.redis.lrange(self.idhist_key, 0, count - 1)
        return [bytes(r).decode(errors="replace") for r in raw]
