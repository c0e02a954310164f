"""The console's sampler: once a second one gateway of the cluster reads every process's
``/metrics`` and writes the cluster-wide sample the console shows.

Which gateway samples is decided by a short lease in Redis (``console:leader``), so the cluster
scrapes each process once a second however many gateways and browsers there are, and another
gateway takes over within a few seconds when the sampler dies. Keys written:

* ``console:live`` the latest sample (JSON, expires after a few seconds);
* ``console:history`` the last hour of headline rates, one point (the mean of the per-second
  samples) every ``HISTORY_EVERY`` s, newest first, fixed size;
* ``console:seen`` process id -> last presence summary, so a process that vanished without
  draining shows as missing;
* ``console:counts`` registered and online device counts (key scans, every ``COUNT_EVERY`` s or
  more on a large cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import orjson

from gateway.console.keys import console_key
from gateway.console.rates import Scrape, average, history_point, parse, summarise
from gateway.console.scan import HOLE, scan_parts
from gateway.rendezvous.store import Store
from hubbub.errors import RegistryError
from hubbub.net import host_port
from hubbub.tasks import TaskSet
from registry import ProcessRecord, Registry


__all__ = ["HISTORY_LEN", "Sampler"]

log = logging.getLogger("hubbub.console.sampler")

PERIOD = 1.0
LEASE_MS = 3000
HISTORY_EVERY = 5
HISTORY_LEN = 3600 // HISTORY_EVERY
"""Points kept: one hour."""
LIVE_TTL_MS = 5000
SEEN_KEEP = 600.0
"""Seconds a vanished process stays listed as missing."""
COUNT_EVERY = 5.0
"""Seconds between device counts at least (more when a count takes long)."""
COUNT_BUDGET = 2.0
"""Seconds one registered-device count may scan for; beyond it the count is a lower bound."""
SCRAPE_TIMEOUT = 0.8
MAX_BODY = 1 << 20
MAX_SCRAPES = 16

_LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] or not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def ops_url(rec: ProcessRecord) -> str | None:
    port = rec.info.get("ops_port")
    if not isinstance(port, int) or port <= 0:
        return None
    return f"http://{host_port(rec.public_ip or '127.0.0.1', port)}/metrics"


class Sampler:
    """Runs in every console-serving gateway; samples only while it holds the lease."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.redis = registry.redis
        self._lease = self.redis.register_script(_LEASE_LUA)
        self._prev: dict[str, Scrape] = {}
        self._prev_at = 0.0
        self._window: list[dict[str, float]] = []
        self._counted = 0.0
        self.counts: dict[str, Any] = {}
        self._count_every = COUNT_EVERY
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, "console sampler")
        self._http: aiohttp.ClientSession | None = None
        self.leader = False

    def key(self, name: str) -> str:
        return console_key(self.registry, name)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._tasks.close()
        if self._http is not None:
            await self._http.close()
        if self.leader:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.redis.delete(self.key("leader"))

    async def _loop(self) -> None:
        while True:
            start = time.monotonic()
            try:
                await self.tick()
            except RegistryError as exc:
                log.debug("sample skipped: %s", exc)
            except Exception:
                log.exception("console sample failed")
            await asyncio.sleep(max(0.05, PERIOD - (time.monotonic() - start)))

    async def tick(self) -> None:
        async with self.registry.guard("console_lease"):
            held = bool(await self._lease(keys=[self.key("leader")],
                                          args=[self.registry.id, LEASE_MS]))
        if not held:
            self.leader = False
            self._prev.clear()
            self._window.clear()
            return
        self.leader = True
        records = await self.registry.processes()
        now, mono = time.time(), time.monotonic()
        scrapes = await self._scrape_all(records)
        dt = mono - self._prev_at if self._prev else 0.0
        sample = summarise(now, dt, self._prev, scrapes, {r.id: r.role for r in records})
        if "online" in self.counts:
            # Liveness records are the cluster's own count; the gateways' gauges lag by seconds.
            sample["rd"]["online"] = self.counts["online"]
        self._prev, self._prev_at = scrapes, mono
        if dt:
            self._window.append(history_point(sample))
        async with self.registry.guard("console_sample"):
            async with self.redis.pipeline(transaction=False) as p:
                p.set(self.key("live"), orjson.dumps(sample), px=LIVE_TTL_MS)
                if len(self._window) >= HISTORY_EVERY:
                    p.lpush(self.key("history"), orjson.dumps(average(self._window)))
                    p.ltrim(self.key("history"), 0, HISTORY_LEN - 1)
                    self._window.clear()
                for r in records:
                    p.hset(self.key("seen"), r.id, orjson.dumps(
                        {"role": r.role, "host": r.host, "pid": r.pid, "state": r.state,
                         "name": r.info.get("name", ""), "seen": now}))
                await p.execute()
        await self._forget_old(now)
        if now - self._counted >= self._count_every:
            self._counted = now
            self._tasks.spawn(self._count_devices())

    async def _forget_old(self, now: float) -> None:
        async with self.registry.guard("console_seen"):
            raw: dict[Any, Any] = await self.redis.hgetall(self.key("seen"))
            old = []
            for pid, blob in raw.items():
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    if now - float(orjson.loads(blob)["seen"]) > SEEN_KEEP:
                        old.append(pid)
            if old:
                await self.redis.hdel(self.key("seen"), *old)

    async def _scrape_all(self, records: list[ProcessRecord]) -> dict[str, Scrape]:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=MAX_SCRAPES))
        http = self._http

        async def one(rec: ProcessRecord) -> tuple[str, Scrape | None]:
            url = ops_url(rec)
            if url is None:
                return rec.id, None
            try:
                async with http.get(url) as resp:
                    if resp.status != 200:
                        return rec.id, None
                    body = await resp.content.read(MAX_BODY)
            except (aiohttp.ClientError, TimeoutError, OSError):
                return rec.id, None
            return rec.id, parse(body.decode(errors="replace"))

        results = await asyncio.gather(*(one(r) for r in records))
        return {pid: s for pid, s in results if s is not None}

    async def _count_devices(self) -> None:
        """Count registered devices (``rd:peer`` keys) and online ones (``rd:live`` keys, which
        expire when a device goes offline) without blocking Redis (SCAN, bounded in time)."""
        store = Store(self.registry)
        started = time.monotonic()
        with contextlib.suppress(RegistryError):
            _, registered, complete = await scan_parts(
                self.registry, store.peer_key(HOLE), budget=COUNT_BUDGET,
                op="console_count", count_only=True)
            _, online, _ = await scan_parts(
                self.registry, store.live_key(HOLE), budget=COUNT_BUDGET,
                op="console_count", count_only=True)
            self.counts = {"registered": registered, "online": online, "complete": complete,
                           "t": time.time()}
            async with self.registry.guard("console_count"):
                await self.redis.set(self.key("counts"), orjson.dumps(self.counts))
        # Scanning stays a small share of Redis's time however many devices there are.
        self._count_every = max(COUNT_EVERY, 10 * (time.monotonic() - started))
