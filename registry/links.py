"""The Redis connections of one process, per deployment mode, behind one small interface.

``open_links(target)`` returns ``Links``: the command client every store uses (a plain client, a
Sentinel-managed one that follows fail-overs, or a cluster client that follows ``MOVED``/``ASK``),
the subscriber kind (classic pub/sub, or sharded pub/sub in Cluster mode so a message only
reaches the node owning its channel), publishing, durable writes bounded by ``WAIT`` and a
description of the topology for ``hubbub status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    TimeoutError as RedisTimeoutError,
)

from hubbub.errors import RegistryUnavailable
from registry.target import CLUSTER, SENTINEL, RedisTarget


__all__ = ["Dispatch", "Links", "Subscriber", "open_links"]

log = logging.getLogger("hubbub.registry")

MAX_CONNECTIONS = 64
"""Redis connections per process (per node in Cluster mode) for commands; pub/sub has its own."""

WAIT_TIMEOUT_MS = 1000
"""How long a durable write waits for its replicas before it is refused."""

REPLICA_PROBE_EVERY = 2.0
"""Seconds a primary's replica count is trusted for ``REDIS_MIN_REPLICAS=auto``."""

Dispatch = Callable[[dict[str, Any]], None]
Build = Callable[[Any], Awaitable[None] | None]


class Subscriber(Protocol):
    """One subscription session; any Redis error ends it and the registry opens a new one.

    A *broadcast* channel reaches every subscriber of the deployment whichever node it is
    published on (classic pub/sub, which a cluster relays to all nodes; also what a Lua
    script's ``PUBLISH`` does); any other channel is sharded in Cluster mode.
    """

    async def open(self, channels: list[tuple[str, bool]]) -> None: ...

    async def add(self, channel: str, broadcast: bool) -> None: ...

    async def remove(self, channel: str) -> None: ...

    async def pump(self) -> None: ...

    async def aclose(self) -> None: ...


def _common() -> dict[str, Any]:
    return {
        "socket_connect_timeout": 2.0,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's primary discovery with a pool that queues bursts instead of failing."""


class _ClusterScript(AsyncScript):
    """A script that, queued on a cluster pipeline (which loads no scripts), is sent whole:
    ``EVAL`` never meets a node without the script, such as a freshly promoted replica."""

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if isinstance(client, ClusterPipeline):
            keys, args = list(keys or []), list(args or [])
            text = self.script if isinstance(self.script, str) else bytes(self.script).decode()
            return client.eval(text, len(keys), *keys, *args)
        return await super().__call__(keys or [], args or [], client)


class _Cluster(RedisCluster):
    """A cluster client whose ``MGET`` may span slots (read per slot, in key order) and whose
    scripts also run inside pipelines."""

    async def mget(self, keys: Any, *args: Any) -> list[Any]:
        return cast(list[Any], await self.mget_nonatomic(keys, *args))

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        return _ClusterScript(self, script)


async def _pump(pubsub: PubSub, dispatch: Dispatch) -> None:
    """Hand every message of ``pubsub`` to ``dispatch`` until cancelled or the link fails."""
    while True:
        msg = await pubsub.get_message(timeout=1.0)
        if msg is not None:
            dispatch(msg)


class _PlainSubscriber:
    """Classic ``SUBSCRIBE`` on one connection (single Redis or the Sentinel's primary)."""

    def __init__(self, client: aioredis.Redis, dispatch: Dispatch) -> None:
        self._pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)
        self._dispatch = dispatch

    async def open(self, channels: list[tuple[str, bool]]) -> None:
        await self._pubsub.subscribe(*(c for c, _ in channels))

    async def add(self, channel: str, broadcast: bool) -> None:
        await self._pubsub.subscribe(channel)

    async def remove(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def pump(self) -> None:
        await _pump(self._pubsub, self._dispatch)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


class _NodeReader:
    """``SSUBSCRIBE`` (and ``SUBSCRIBE`` for broadcasts) on one cluster node, read by its own
    task."""

    def __init__(self, node: ClusterNode, kwargs: dict[str, Any], dispatch: Dispatch) -> None:
        self.name = node.name
        # No retries: a reader whose node went away must end at once, so the subscriber
        # notices a killed primary even when this process sends it no commands, and
        # re-subscribes on the promoted replica (the client's default retries took seconds).
        self.client = aioredis.Redis(host=node.host, port=int(node.port),
                                     **{**kwargs, "retry": Retry(NoBackoff(), 0)})
        self.pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
        self.channels: set[str] = set()
        self._dispatch = dispatch
        self.task: asyncio.Task[None] | None = None

    async def add(self, channel: str, broadcast: bool = False) -> None:
        if broadcast:
            await self.pubsub.subscribe(channel)
        else:
            await self.pubsub.ssubscribe(channel)
        self.channels.add(channel)
        if self.task is None:
            self.task = asyncio.create_task(self._read(), name=f"registry-ssub-{self.name}")

    async def remove(self, channel: str, broadcast: bool = False) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            if broadcast:
                await self.pubsub.unsubscribe(channel)
            else:
                await self.pubsub.sunsubscribe(channel)

    async def _read(self) -> None:
        await _pump(self.pubsub, self._dispatch)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


class _ShardedSubscriber:
    """Sharded pub/sub across a cluster: one reader per primary that owns a channel's slot.

    A dead reader or a channel whose slot now belongs to another primary (fail-over, slot move)
    ends the session; the registry then refreshes the topology and subscribes everything anew.
    """

    def __init__(self, cluster: RedisCluster, kwargs: dict[str, Any], dispatch: Dispatch,
                 refresh: bool) -> None:
        self._cluster = cluster
        self._kwargs = kwargs
        self._dispatch = dispatch
        self._refresh = refresh
        self._readers: dict[str, _NodeReader] = {}
        self._route: dict[str, str] = {}
        self._broadcast: _NodeReader | None = None

    async def open(self, channels: list[tuple[str, bool]]) -> None:
        if self._refresh:
            # The previous session died: the slot map may be stale (a replica took over).
            self._cluster._request_refresh()
        await self._cluster.initialize()
        for channel, broadcast in channels:
            await self.add(channel, broadcast)

    def _node(self, channel: str) -> ClusterNode:
        node = self._cluster.get_node_from_key(channel)
        if node is None:  # pragma: no cover - only asked for primaries
            raise RedisConnectionError(f"no node serves {channel}")
        return node

    async def add(self, channel: str, broadcast: bool) -> None:
        if broadcast:
            if self._broadcast is None:
                # Any node will do: the cluster relays classic messages to every node.
                node = self._cluster.get_primaries()[0]
                self._broadcast = _NodeReader(node, self._kwargs, self._dispatch)
            await self._broadcast.add(channel, True)
            return
        node = self._node(channel)
        reader = self._readers.get(node.name)
        if reader is None:
            reader = self._readers[node.name] = _NodeReader(node, self._kwargs, self._dispatch)
        await reader.add(channel)
        self._route[channel] = node.name

    async def remove(self, channel: str) -> None:
        if self._broadcast is not None and channel in self._broadcast.channels:
            await self._broadcast.remove(channel, True)
            return
        name = self._route.pop(channel, None)
        reader = self._readers.get(name or "")
        if reader is not None:
            await reader.remove(channel)

    async def pump(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            readers = list(self._readers.values())
            if self._broadcast is not None:
                readers.append(self._broadcast)
            for reader in readers:
                if reader.task is not None and reader.task.done():
                    exc = None if reader.task.cancelled() else reader.task.exception()
                    raise RedisConnectionError(f"shard subscriber on {reader.name} ended: {exc}")
            for channel, name in self._route.items():
                node = self._cluster.get_node_from_key(channel)
                if node is None or node.name != name:
                    raise RedisConnectionError(f"{channel} moved from {name}")

    async def aclose(self) -> None:
        for reader in self._readers.values():
            await reader.aclose()
        self._readers.clear()
        if self._broadcast is not None:
            await self._broadcast.aclose()
            self._broadcast = None


class Links:
    """Command client, subscriber factory, publishing and durable writes for one target."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self.mode = target.mode
        self.sharded = self.mode == CLUSTER
        self._replicas: dict[str, tuple[float, int]] = {}
        self._sentinel: Sentinel | None = None
        self._cluster: RedisCluster | None = None
        node = target.node_kwargs()
        if self.mode == CLUSTER:
            self._cluster = _Cluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.cluster_nodes],
                max_connections=MAX_CONNECTIONS, socket_timeout=5.0,
                socket_connect_timeout=2.0,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3), **node)
            # The cluster client offers the command API the stores use (MOVED/ASK handled).
            self.redis = cast(aioredis.Redis, self._cluster)
            self._sub_client: aioredis.Redis | None = None
        elif self.mode == SENTINEL:
            sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": 1.0,
                                               "socket_timeout": 1.0}
            if target.sentinel_password:
                sentinel_kwargs["password"] = target.sentinel_password
            self._sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs,
                                      **node)
            self.redis = self._sentinel.master_for(
                target.master, connection_pool_class=_BlockingSentinelPool,
                max_connections=MAX_CONNECTIONS, timeout=5.0, socket_timeout=5.0,
                **_common())
            self._sub_client = self._sentinel.master_for(target.master, **_common())
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                target.url, max_connections=MAX_CONNECTIONS, timeout=5.0, socket_timeout=5.0,
                **_common())
            self.redis = aioredis.Redis.from_pool(pool)
            # Pub/sub blocks on reads by design, so it gets a client without a socket timeout.
            self._sub_client = aioredis.Redis.from_url(target.url, **_common())

    # ------------------------------------------------------------- pub/sub
    def subscriber(self, dispatch: Dispatch, after_failure: bool) -> Subscriber:
        if self._cluster is not None:
            kwargs = {**self.target.node_kwargs(), "socket_connect_timeout": 2.0}
            return _ShardedSubscriber(self._cluster, kwargs, dispatch, after_failure)
        assert self._sub_client is not None
        return _PlainSubscriber(self._sub_client, dispatch)

    async def publish(self, channel: str, data: bytes, broadcast: bool = False) -> int:
        if self.sharded and not broadcast:
            return int(await self.redis.spublish(channel, data))
        return int(await self.redis.publish(channel, data))

    def queue_publish(self, pipe: Any, channel: str, data: bytes, broadcast: bool = False) -> None:
        """Add a publish of ``data`` on ``channel`` to a pipeline."""
        if self.sharded and not broadcast:
            pipe.spublish(channel, data)
        else:
            pipe.publish(channel, data)

    # ------------------------------------------------------------- durability
    async def durable(self, key: str, build: Build) -> list[Any]:
        """Run ``build``'s commands (all on ``key``'s node) and wait for the replicas.

        Returns:
            The results of the commands ``build`` queued.

        Raises:
            RegistryUnavailable: fewer replicas than required confirmed within the bound.
        """
        need = await self._needed_replicas(key)
        node = None
        async with self.redis.pipeline(transaction=False) as p:
            queued = build(p)
            if asyncio.iscoroutine(queued):  # a script queued with ``client=p``
                await queued
            if need:
                if self._cluster is not None:
                    # WAIT counts this connection's writes: it must reach the key's node.
                    node = self._cluster.get_node_from_key(key)
                    p.execute_command("WAIT", need, WAIT_TIMEOUT_MS, target_nodes=node)
                else:
                    p.execute_command("WAIT", need, WAIT_TIMEOUT_MS)
            results: list[Any] = await p.execute()
        owner = self._cluster.get_node_from_key(key) if node is not None and self._cluster else None
        if node is not None and (owner is None or owner.name != node.name):
            # The write was redirected (slot moved) after WAIT ran on the old owner: its
            # answer says nothing about the write.
            raise RegistryUnavailable("slot moved during a durable write")
        if need:
            acked = int(results.pop())
            if acked < need:
                raise RegistryUnavailable(
                    f"write not confirmed by {need} replica(s) within {WAIT_TIMEOUT_MS} ms "
                    f"({acked} did)")
        return results

    async def _needed_replicas(self, key: str) -> int:
        if self.target.min_replicas >= 0:
            return self.target.min_replicas
        if self._cluster is not None:
            await self._cluster.initialize()
            nodes = self._cluster.nodes_manager.slots_cache.get(self._cluster.keyslot(key), [])
            return 1 if len(nodes) > 1 else 0
        at, count = self._replicas.get("", (-1e9, 0))
        if time.monotonic() - at > REPLICA_PROBE_EVERY:
            info = await self.redis.info("replication")
            count = int(info.get("connected_slaves", 0))
            self._replicas[""] = (time.monotonic(), count)
        return 1 if count else 0

    # ------------------------------------------------------------- status
    async def topology(self) -> dict[str, Any]:
        """The mode and the primary/nodes in use, for ``hubbub status``."""
        out: dict[str, Any] = {"mode": self.mode, "target": self.target.describe()}
        if self._cluster is not None:
            await self._cluster.initialize()
            nodes = []
            for primary in self._cluster.get_primaries():
                slots = sorted(s for s, ns in self._cluster.nodes_manager.slots_cache.items()
                               if ns and ns[0].name == primary.name)
                replicas = sorted({n.name for s in slots[:1]
                                   for n in self._cluster.nodes_manager.slots_cache[s][1:]})
                nodes.append({"primary": primary.name, "slots": _ranges(slots),
                              "replicas": replicas})
            out["nodes"] = sorted(nodes, key=lambda n: n["primary"])
            return out
        if self._sentinel is not None:
            host, port = await self._sentinel.discover_master(self.target.master)
            out["primary"] = f"{_text(host)}:{_text(port)}"
            out["replicas"] = [f"{_text(h)}:{_text(p)}" for h, p in
                               await self._sentinel.discover_slaves(self.target.master)]
            return out
        info = await self.redis.info("replication")
        out["role"] = str(info.get("role", "?"))
        out["replicas"] = [f"{v['ip']}:{v['port']}" for k, v in sorted(info.items())
                           if k.startswith("slave") and isinstance(v, dict)]
        return out

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self._sub_client is not None:
            with contextlib.suppress(Exception):
                await self._sub_client.aclose()
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await s.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ranges(slots: list[int]) -> str:
    out: list[str] = []
    start = prev = None
    for s in slots:
        if start is None:
            start = prev = s
        elif prev is not None and s == prev + 1:
            prev = s
        else:
            out.append(f"{start}-{prev}")
            start = prev = s
    if start is not None:
        out.append(f"{start}-{prev}")
    return ",".join(out)


def open_links(target: RedisTarget | str) -> Links:
    """The links for ``target`` (a bare URL means a single Redis)."""
    if isinstance(target, str):
        target = RedisTarget(url=target)
    return Links(target)
