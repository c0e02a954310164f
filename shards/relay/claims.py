"""uuid ownership in Redis, batched: one pipeline carries every claim made meanwhile.

A claim is ``SET relay:uuid:<host>:<uuid> <process id> NX GET PX <ttl>``: the first half's shard
becomes the owner, the second half learns who it is. Claims arriving while a pipeline is in flight
wait for the next one, so a burst of relay connections costs a few round trips on one connection
instead of a connection each (the pool would run dry). Forgetting a paired uuid rides along with
the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hubbub.errors import RegistryUnavailable
from registry import Registry


__all__ = ["Claims"]

log = logging.getLogger("hubbub.relay.claims")

MAX_BATCH = 512
MAX_QUEUE = 20_000


class Claims:
    """Batched uuid claims for one shard.

    Args:
        registry: the shard's registry (its id is the claim value).
        ttl: seconds a claim lives (longer than the pairing wait).
    """

    def __init__(self, registry: Registry, ttl: float) -> None:
        self.registry = registry
        self.ttl_ms = int(ttl * 1000)
        self._claims: list[tuple[str, str, asyncio.Future[str | None]]] = []
        self._forget: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._degraded = False

    def key(self, uuid: str) -> str:
        return self.registry.key("relay", "uuid", self.registry.host, uuid)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-claims")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for _, _, fut in self._claims:
            if not fut.done():
                fut.set_result(None)
        self._claims.clear()

    async def claim(self, uuid: str, force: bool = False) -> str | None:
        """The owner of ``uuid`` (this process if it claimed first); None if Redis failed.

        ``force`` makes this process the owner whatever the key held (the owner died).
        """
        if len(self._claims) >= MAX_QUEUE:
            return None
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._claims.append((uuid, "force" if force else "nx", fut))
        self._wake.set()
        return await fut

    def forget(self, uuid: str) -> None:
        if len(self._forget) < MAX_QUEUE:
            self._forget.append(uuid)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._claims or self._forget:
                batch, self._claims = self._claims[:MAX_BATCH], self._claims[MAX_BATCH:]
                forget, self._forget = self._forget[:MAX_BATCH], self._forget[MAX_BATCH:]
                await self._flush(batch, forget)

    async def _flush(self, batch: list[tuple[str, str, asyncio.Future[str | None]]],
                     forget: list[str]) -> None:
        me = self.registry.id
        results: list[object] = []
        try:
            async with self.registry.guard("relay_claim"):
                async with self.registry.redis.pipeline(transaction=False) as p:
                    for uuid, mode, _ in batch:
                        if mode == "force":
                            p.set(self.key(uuid), me, px=self.ttl_ms)
                        else:
                            p.set(self.key(uuid), me, nx=True, get=True, px=self.ttl_ms)
                    if forget:
                        p.delete(*(self.key(u) for u in forget))
                    results = await p.execute()
        except RegistryUnavailable as exc:
            if not self._degraded:
                log.warning("relay claims fall back to hashing over this host's shards: %s", exc)
                self._degraded = True
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            return
        if self._degraded:
            log.info("relay claims back in Redis")
            self._degraded = False
        for (_, mode, fut), prev in zip(batch, results, strict=False):
            if fut.done():
                continue
            if mode == "force" or prev is None:
                fut.set_result(me)
            elif isinstance(prev, bytes):
                fut.set_result(prev.decode())
            else:
                fut.set_result(str(prev))
