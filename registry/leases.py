"""Shard slot leases: slot k of a host owns slice k of the RTC port range.

A lease is a key ``slot:<host>:<k>`` holding the owner's process id with a TTL equal to the
presence TTL. ``SET NX`` makes two live shards never hold one slot; a shard that dies stops
refreshing and its slot is free again when the key expires. After a Redis restart that lost the
key, the owner takes it back on its next refresh.
"""

from __future__ import annotations

import asyncio
import logging

from hubbub.errors import LeaseLost
from registry.client import Registry


__all__ = ["SlotLease"]

log = logging.getLogger("hubbub.registry.lease")

# Returns 1 if the lease is ours and was extended, 2 if it was missing and we took it back,
# 0 if another process holds it.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SlotLease:
    """Lease one of ``slots`` slots on the registry's host.

    Args:
        registry: the shard's registry (its id is the lease value).
        slots: number of slots on this host.
        preferred: slot to try first (e.g. the honcho instance index).
    """

    def __init__(self, registry: Registry, slots: int, preferred: int = 0) -> None:
        self.registry = registry
        self.slots = slots
        self.preferred = preferred % slots if slots else 0
        self.slot: int | None = None
        self._refresh = registry.redis.register_script(_REFRESH)
        self._release = registry.redis.register_script(_RELEASE)

    def _key(self, slot: int) -> str:
        return self.registry.key("slot", self.registry.host, slot)

    @property
    def _ttl_ms(self) -> int:
        return int(self.registry.ttl * 1000)

    async def try_acquire(self) -> int | None:
        """Take the first free slot, starting at the preferred one; None if all are held."""
        order = [(self.preferred + i) % self.slots for i in range(self.slots)]
        async with self.registry.guard("lease"):
            for slot in order:
                if await self.registry.redis.set(self._key(slot), self.registry.id, nx=True,
                                                 px=self._ttl_ms):
                    self.slot = slot
                    return slot
        return None

    async def acquire(self, retry_every: float | None = None) -> int:
        """Wait until a slot is free and take it (retries while Redis is down or slots full)."""
        # Poll briskly: a dead shard's slot should be re-taken right when its lease expires.
        wait = retry_every if retry_every is not None else min(self.registry.ttl / 10, 0.5)
        warned = False
        while True:
            try:
                slot = await self.try_acquire()
            except Exception as exc:  # RegistryUnavailable: keep trying, never crash-loop
                if not warned:
                    log.warning("cannot lease a shard slot yet: %s", exc)
                    warned = True
            else:
                if slot is not None:
                    log.info("leased shard slot %d of %d", slot, self.slots)
                    return slot
                if not warned:
                    log.warning("all %d shard slots of host %s are held; waiting", self.slots,
                                self.registry.host)
                    warned = True
            await asyncio.sleep(wait)

    async def refresh(self) -> None:
        """Extend the lease (a registry tick hook).

        Raises:
            LeaseLost: another process holds our slot.
        """
        if self.slot is None:
            return
        got = await self._refresh(keys=[self._key(self.slot)],
                                  args=[self.registry.id, self._ttl_ms])
        if got == 2:
            log.info("shard slot %d re-taken after redis lost it", self.slot)
        elif got == 0:
            slot, self.slot = self.slot, None
            raise LeaseLost(f"shard slot {slot} is held by another process")

    async def release(self) -> None:
        if self.slot is None:
            return
        async with self.registry.guard("lease"):
            await self._release(keys=[self._key(self.slot)], args=[self.registry.id])
        self.slot = None
