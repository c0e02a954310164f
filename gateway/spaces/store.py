"""Space state in Redis: members with cluster-wide playerIds, per-gateway membership, reaping.

Keys (all under the registry prefix):

* ``space:<uri>:members`` hash ``playerId → JSON {g, s, name, avatar, address, grounded}``
  (``g`` the gateway's process id, ``s`` the socket id);
* ``spaces:gw:<gateway>`` hash ``uri → number of that gateway's members there``;
* ``spaces:gateways`` set of gateways that hold members anywhere;
* ``spaces:alive:<gateway>`` the gateway's membership lease (short TTL, refreshed by it);
* ``space:<uri>:shard`` the shard holding the space's media (deleted when the space empties).

In Cluster mode every key carries the one slot tag ``{spaces}`` (a script touches a space's
members, the gateway's counts and the gateway set together, which Redis Cluster allows only
within one slot).
Every change is one Lua script, so ids are allocated atomically cluster-wide and a dead gateway's
players are removed exactly once (the reaper that wins ``SREM spaces:gateways`` does it) as soon
as its membership lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from registry import Registry


__all__ = ["Member", "SpaceStore", "shard_key"]

MAX_PLAYERS = 256
"""Players per space: a playerId is one byte (a location record's byte 0); ``_JOIN`` spells
the number out."""
REDIS_CONCURRENCY = 48
"""Redis commands of the spaces host in flight at once per gateway (the pool has ~100)."""

# Random free id like the original: walk 0..255 from a random start with a random odd step
# (an odd step is coprime with 256, so the walk visits every id once).
_JOIN = """
if redis.call('HLEN', KEYS[1]) >= 256 then return {-1, {}} end
local start = tonumber(ARGV[1])
local step = tonumber(ARGV[2])
for i = 0, 255 do
  local id = (start + i * step) % 256
  if redis.call('HSETNX', KEYS[1], tostring(id), ARGV[3]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
    redis.call('SADD', KEYS[3], ARGV[5])
    return {id, redis.call('HGETALL', KEYS[1])}
  end
end
return {-1, {}}
"""

_LEAVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec['s'] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
"""

_UPDATE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec['s'] ~= ARGV[2] then return 0 end
rec[ARGV[3]] = cjson.decode(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 1
"""

_REAP_SPACE = """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec['g'] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    out[#out + 1] = tonumber(all[i])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return out
"""


@dataclass(frozen=True, slots=True)
class Member:
    player_id: int
    gateway: str
    socket: str
    name: str | None
    avatar: str | None
    address: str | None
    grounded: bool

    @classmethod
    def from_json(cls, player_id: int, raw: bytes) -> Member | None:
        try:
            rec = orjson.loads(raw)
            return cls(player_id, str(rec["g"]), str(rec["s"]), _opt(rec.get("name")),
                       _opt(rec.get("avatar")), _opt(rec.get("address")),
                       bool(rec.get("grounded", True)))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def shard_key(registry: Registry, uri: str) -> str:
    """The key naming the media shard a space is placed on (written by the media shard client,
    removed with the space's last member)."""
    return registry.key_in("spaces", "space", uri, "shard")


class SpaceStore:
    """The Redis side of spaces for one gateway process."""

    def __init__(self, registry: Registry, gate: asyncio.Semaphore | None = None) -> None:
        self.registry = registry
        self.gate = gate or asyncio.Semaphore(REDIS_CONCURRENCY)
        r = registry.redis
        self._join = r.register_script(_JOIN)
        self._leave = r.register_script(_LEAVE)
        self._update = r.register_script(_UPDATE)
        self._reap = r.register_script(_REAP_SPACE)

    @contextlib.asynccontextmanager
    async def guard(self, op: str) -> AsyncIterator[None]:
        """Bounded concurrency plus the registry's typed errors and metrics."""
        async with self.gate, self.registry.guard(op):
            yield

    def members_key(self, uri: str) -> str:
        return self.registry.key_in("spaces", "space", uri, "members")

    def shard_key(self, uri: str) -> str:
        return shard_key(self.registry, uri)

    def gateway_key(self, gateway: str) -> str:
        return self.registry.key_in("spaces", "spaces", "gw", gateway)

    @property
    def gateways_key(self) -> str:
        return self.registry.key_in("spaces", "spaces", "gateways")

    async def join(self, uri: str, socket: str, name: str | None, avatar: str | None,
                   address: str | None, grounded: bool) -> tuple[int, list[Member]]:
        """Allocate a playerId; returns ``(-1, [])`` when the space is full.

        Returns:
            The new id and every member at that instant (including the joiner).
        """
        gw = self.registry.id
        record = orjson.dumps({"g": gw, "s": socket, "name": name, "avatar": avatar,
                               "address": address, "grounded": grounded})
        start = secrets.randbelow(MAX_PLAYERS)
        step = secrets.randbelow(MAX_PLAYERS // 2) * 2 + 1
        async with self.guard("spaces_join"):
            res: Any = await self._join(
                keys=[self.members_key(uri), self.gateway_key(gw), self.gateways_key],
                args=[start, step, record, uri, gw])
        pid = int(res[0])
        if pid < 0:
            return -1, []
        flat = res[1]
        members = []
        for i in range(0, len(flat), 2):
            m = Member.from_json(int(flat[i]), flat[i + 1])
            if m is not None:
                members.append(m)
        return pid, members

    async def leave(self, uri: str, player_id: int, socket: str) -> bool:
        gw = self.registry.id
        async with self.guard("spaces_leave"):
            n: Any = await self._leave(
                keys=[self.members_key(uri), self.gateway_key(gw), self.shard_key(uri)],
                args=[player_id, socket, uri])
        return bool(n)

    async def update(self, changes: list[tuple[str, int]], socket: str, field: str,
                     value: Any) -> None:
        """Set ``field`` of this socket's member record in every ``(uri, playerId)``."""
        if not changes:
            return
        blob = orjson.dumps(value)
        async with self.guard("spaces_update"):
            async with self.registry.redis.pipeline(transaction=False) as p:
                for uri, pid in changes:
                    await self._update(keys=[self.members_key(uri)],
                                       args=[pid, socket, field, blob], client=p)
                await p.execute()

    async def count_first(self, uris: list[str]) -> int:
        """The player count of the first of ``uris`` that has players (0 if none has)."""
        async with self.guard("spaces_count"):
            async with self.registry.redis.pipeline(transaction=False) as p:
                for uri in uris:
                    p.hlen(self.members_key(uri))
                counts: list[int] = await p.execute()
        return next((n for n in counts if n), 0)

    def alive_key(self, gateway: str) -> str:
        return self.registry.key_in("spaces", "spaces", "alive", gateway)

    async def keep_alive(self, ttl: float) -> bool:
        """Refresh this gateway's membership lease.

        Returns:
            Whether this gateway is listed among the gateways holding members (it is from its
            first join on, until a reaper removes it).
        """
        gw = self.registry.id
        async with self.guard("spaces_alive"):
            async with self.registry.redis.pipeline(transaction=False) as p:
                p.set(self.alive_key(gw), b"1", px=int(ttl * 1000))
                p.sismember(self.gateways_key, gw)
                _, listed = await p.execute()
        return bool(listed)

    async def retire(self) -> None:
        """A gateway leaving cleanly (its players are gone): drop its lease and listing."""
        gw = self.registry.id
        async with self.guard("spaces_alive"):
            async with self.registry.redis.pipeline(transaction=False) as p:
                p.delete(self.alive_key(gw))
                p.srem(self.gateways_key, gw)
                await p.execute()

    async def dead_gateways(self) -> list[str]:
        """Gateways listed as holding members whose membership lease has expired."""
        async with self.guard("spaces_gateways"):
            raw: Any = await self.registry.redis.smembers(self.gateways_key)
            ids = sorted(x.decode() if isinstance(x, bytes) else str(x) for x in raw)
            ids = [i for i in ids if i != self.registry.id]
            if not ids:
                return []
            async with self.registry.redis.pipeline(transaction=False) as p:
                for i in ids:
                    p.exists(self.alive_key(i))
                alive = await p.execute()
        return [i for i, ok in zip(ids, alive, strict=True) if not ok]

    async def claim_reap(self, gateway: str) -> dict[str, int]:
        """Claim a dead gateway's cleanup; returns its spaces, or {} if another gateway won."""
        async with self.guard("spaces_reap"):
            won: int = await self.registry.redis.srem(self.gateways_key, gateway)
            if not won:
                return {}
            raw: Any = await self.registry.redis.hgetall(self.gateway_key(gateway))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def reap_space(self, gateway: str, uri: str) -> list[int]:
        """Remove every member ``gateway`` held in ``uri``; returns their playerIds."""
        async with self.guard("spaces_reap"):
            out: Any = await self._reap(keys=[self.members_key(uri), self.shard_key(uri)],
                                        args=[gateway])
        return [int(x) for x in out]

    async def forget_gateway(self, gateway: str) -> None:
        async with self.guard("spaces_reap"):
            await self.registry.redis.delete(self.gateway_key(gateway))
