"""Registry: one process's link to the Redis control plane.

It keeps the process's presence key alive (TTL refreshed every TTL/3, together with its load and
state), routes messages to and from process inboxes (pub/sub, msgpack envelopes whose payload is a
contract from ``hubbub.contracts``, dispatched by its type to a typed handler, optionally in order
per sender), runs request/reply (a reply comes back to the requester's inbox, matched by request
id) with a timeout, and survives Redis restarts and fail-overs: the heartbeat rewrites presence
and runs the tick hooks (lease refresh) as soon as Redis answers again, and the subscriber
re-subscribes every channel it had (on the new primary after a fail-over).

The deployment mode (single Redis, Sentinel, Cluster) is hidden in ``registry.links``; callers
build keys with ``key`` and put keys that one script or transaction touches together under one
``tag``, so they share a cluster slot in every mode.

Callers get typed errors (``RegistryUnavailable``, ``NoListener``, ``RequestTimeout``,
``RemoteError``) or bounded waits, never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisError,
    TimeoutError as RedisTimeoutError,
)

from hubbub import metrics
from hubbub.contracts.base import Contract
from hubbub.errors import (
    ContractError,
    HubbubError,
    NoListener,
    RegistryUnavailable,
    RemoteError,
    RequestTimeout,
)
from hubbub.tasks import TaskSet
from registry.codec import Envelope, Kind, decode, encode, pack, unpack
from registry.hostlink import HostLink
from registry.links import Build, Subscriber, open_links
from registry.target import RedisTarget


__all__ = ["ProcessRecord", "Registry", "TypedHandler"]

log = logging.getLogger("hubbub.registry")

M = TypeVar("M", bound=Contract)
R = TypeVar("R", bound=Contract)

TypedHandler = Callable[[M, str], Contract | None | Awaitable[Contract | None]]
"""An inbox handler: ``(message, sender_id) -> reply contract or None`` (sync or async)."""


RawHandler = Callable[[bytes], Any]
"""A channel handler: receives the raw published bytes."""

MAX_INFLIGHT = 2048
"""Inbox handler tasks allowed at once; beyond this, requests are refused as busy."""
LANE_LIMIT = 1024
"""Messages of one ordered type from one sender waiting for their handler; beyond, dropped."""
MAX_LANED = 16384
"""Messages waiting in all ordered lanes together; beyond, dropped."""

_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class _Route:
    """How inbox messages of one contract type are handled."""

    cls: type[Contract]
    handler: Callable[[Any, str], Any]
    ordered: bool
    inline: bool
    """A plain function: a fire-and-forget message runs it at once, without a task."""


_Laned = tuple[_Route, Envelope, Contract]


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One live process as its presence key describes it."""

    id: str
    role: str
    host: str
    pid: int
    public_ip: str
    started: float
    state: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.started)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ProcessRecord:
        return cls(
            id=str(info["id"]),
            role=str(info["role"]),
            host=str(info["host"]),
            pid=int(info["pid"]),
            public_ip=str(info.get("public_ip", "")),
            started=float(info.get("started", 0.0)),
            state=str(info.get("state", "up")),
            info=info,
        )


def new_process_id(role: str, host: str) -> str:
    # The random part keeps ids unique across hosts that share a hostname and across pid reuse.
    return f"{role}:{host}:{os.getpid()}:{secrets.token_hex(3)}"


class DurableScript:
    """A registered script run through ``Registry.durable`` (``await script(keys=, args=)``).

    With ``batch``, calls made while a round trip is under way are sent together, as one
    pipeline with one ``WAIT`` (outside Cluster mode, where one node holds every key): under
    load a registration then costs a share of a round trip instead of a whole one.
    """

    MAX_BATCH = 128

    def __init__(self, registry: Registry, script: Any, batch: bool = False) -> None:
        self._registry = registry
        self._script = script
        self._loaded = False
        self._batch = batch and registry.tag("k") == "k"
        self._queue: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        if not self._batch:
            return (await self._run([(keys, args)]))[0]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[:self.MAX_BATCH]
            del self._queue[:self.MAX_BATCH]
            try:
                results = await self._run([(k, a) for k, a, _ in batch])
            except Exception as exc:  # every caller gets the failure
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _run(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        def build(pipe: Any) -> None:
            # A bare EVALSHA: a script object in a pipeline first asks SCRIPT EXISTS, one more
            # round trip per call; a missing script fails with NOSCRIPT and is loaded below.
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        for attempt in range(2):
            if attempt or not self._loaded:
                # A cluster pipeline does not load scripts itself, and a promoted replica may
                # not have them: load on every primary, then run.
                async with self._registry.guard("script_load"):
                    await self._registry.redis.script_load(self._script.script)
                self._loaded = True
            try:
                return await self._registry.durable(str(calls[0][0][0]), build)
            except RegistryUnavailable as exc:
                if attempt or "NOSCRIPT" not in str(exc) and "No matching script" not in str(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class Registry:
    """The control-plane client of one process.

    Args:
        target: the Redis deployment (a bare URL means a single Redis).
        prefix: prefix of every key and channel.
        role: ``gateway``, ``shard`` or a tool name (tools pass ``presence=False``).
        host: cluster-wide host name.
        info: initial presence fields (ports, public ip, …); see ``set_info``.
        ttl: presence TTL in seconds; refreshed every ``ttl / 3``.
        presence: whether to announce this process at all.
    """

    def __init__(
        self,
        target: RedisTarget | str,
        prefix: str,
        role: str,
        host: str,
        info: dict[str, Any] | None = None,
        ttl: float = 5.0,
        presence: bool = True,
    ) -> None:
        self.prefix = prefix
        self.role = role
        self.host = host
        self.ttl = ttl
        self.id = new_process_id(role, host)
        self.started = time.time()
        self._presence = presence
        self._info: dict[str, Any] = dict(info or {})
        self._state = "up"
        self._links = open_links(target)
        self.mode = self._links.mode
        self.redis: aioredis.Redis = self._links.redis
        self._routes: dict[str, _Route] = {}
        self._lanes: dict[tuple[str, str], deque[_Laned]] = {}
        self._laned = 0
        self._channels: dict[str, RawHandler] = {}
        self._broadcasts: set[str] = set()
        self._ticks: list[Callable[[], Awaitable[None]]] = []
        self._sources: list[Callable[[], dict[str, Any]]] = []
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 0
        self._tasks = TaskSet(log, "registry handler")
        self._bg: list[asyncio.Task[None]] = []
        self._sub: Subscriber | None = None
        self._subscribed = asyncio.Event()
        self._first_beat = asyncio.Event()
        self._last_ok = 0.0
        self._restored_at = -1e9
        self._down = False
        self._closing = False
        self.on_fatal: Callable[[Exception], None] | None = None
        self._wake = asyncio.Event()
        self._link: HostLink | None = None

    # ----------------------------------------------------------------- names
    def key(self, *parts: str | int) -> str:
        """A Redis key under this cluster's prefix."""
        return self.prefix + ":".join(str(p) for p in parts)

    def tag(self, value: str | int) -> str:
        """``value`` as a key part that puts every key built with it in one cluster slot.

        In Cluster mode it is a hash tag (``{value}``); elsewhere the bare value, so the keys
        of a single Redis or Sentinel deployment keep their names.
        """
        return "{" + str(value) + "}" if self._links.sharded else str(value)

    def key_in(self, group: str, *parts: str | int) -> str:
        """A key of ``group``: in Cluster mode prefixed with the hash tag ``{group}`` (every
        key of the group in one slot), elsewhere the same as ``key(*parts)``."""
        if self._links.sharded:
            return self.prefix + "{" + group + "}:" + ":".join(str(p) for p in parts)
        return self.key(*parts)

    def inbox(self, process_id: str) -> str:
        # Tagged by the process, so in Cluster mode an inbox lives on one node.
        return self.key("inbox", self.tag(process_id))

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the heartbeat and subscriber tasks; returns at once (Redis may be down)."""
        if self._presence:
            link = HostLink(self.prefix, self.id, self._on_inbox)
            if link.open():
                self._link = link
        self._bg = [
            asyncio.create_task(self._heartbeat_loop(), name="registry-heartbeat"),
            asyncio.create_task(self._subscriber_loop(), name="registry-subscriber"),
        ]

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until presence is written and the inbox is subscribed; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._first_beat.wait()
                await self._subscribed.wait()
            return True
        except TimeoutError:
            return False

    @property
    def healthy(self) -> bool:
        """Redis answered within one TTL and the inbox is subscribed."""
        return self._subscribed.is_set() and time.monotonic() - self._last_ok < self.ttl

    @property
    def settling(self) -> bool:
        """Whether expired TTL keys of *other* processes prove nothing yet: Redis is away, or
        came back (or failed over, or failed a call) less than one TTL ago, so they may not
        have refreshed their keys since. Reapers wait while this holds."""
        return not self.healthy or time.monotonic() - self._restored_at < self.ttl

    async def close(self) -> None:
        """Leave the cluster: stop tasks, delete the presence key, close connections."""
        self._closing = True
        for task in self._bg:
            task.cancel()
        for task in self._bg:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RegistryUnavailable("registry closed"))
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._presence:
            with contextlib.suppress(*_REDIS_ERRORS, RedisError):
                async with asyncio.timeout(1.0):
                    async with self.redis.pipeline(transaction=False) as p:
                        p.delete(self.key("proc", self.id))
                        p.zrem(self.key("procs"), self.id)
                        await p.execute()
        await self._links.aclose()

    # -------------------------------------------------------------- presence
    def set_info(self, **fields: Any) -> None:
        """Change presence fields; written with the next heartbeat (coalesced)."""
        self._info.update(fields)

    def set_state(self, state: str) -> None:
        """``up`` or ``draining``; written with the next heartbeat."""
        self._state = state

    def beat_soon(self) -> None:
        """Write presence now instead of at the next period (state or ports changed)."""
        self._wake.set()

    def add_info_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """Merge ``source()`` into the presence fields right before every heartbeat."""
        self._sources.append(source)

    def add_tick(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after every successful heartbeat (lease refresh, load reports)."""
        self._ticks.append(hook)

    def presence_info(self) -> dict[str, Any]:
        info = dict(self._info)
        for source in self._sources:
            try:
                info.update(source())
            except Exception:
                log.exception("presence info source failed")
        info.update(id=self.id, role=self.role, host=self.host, pid=os.getpid(),
                    started=self.started, state=self._state)
        return info

    async def beat(self) -> None:
        """Write presence once and run the tick hooks."""
        if self._presence:
            expires_ms = int((time.time() + self.ttl) * 1000)
            async with self.redis.pipeline(transaction=False) as p:
                p.set(self.key("proc", self.id), pack(self.presence_info()),
                      px=int(self.ttl * 1000))
                p.zadd(self.key("procs"), {self.id: expires_ms})
                # Forget members that have been dead for a minute; their keys are long gone.
                p.zremrangebyscore(self.key("procs"), "-inf", expires_ms - 60_000 - self.ttl * 1000)
                await p.execute()
            metrics.REDIS_ROUNDTRIPS.labels("presence").inc()
        else:
            await self.redis.ping()
        for hook in self._ticks:
            await hook()

    async def _heartbeat_loop(self) -> None:
        backoff = 0.1
        down_since: float | None = None
        while True:
            try:
                # A beat slower than the TTL counts as a failure: presence would lapse anyway,
                # and an unresponsive (not refusing) Redis must open the circuit in ``guard``.
                async with asyncio.timeout(self.ttl):
                    await self.beat()
            except HubbubError as exc:
                # A tick hook found a fatal condition (a lost lease): the process must stop.
                log.error("%s", exc)
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return
            except (*_REDIS_ERRORS, RedisError, TimeoutError) as exc:
                metrics.REDIS_ERRORS.labels("presence").inc()
                self._down = True
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("redis unreachable (%s); retrying with backoff", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)  # calls wait for this beat (circuit in guard)
                continue
            self._down = False
            if down_since is not None:
                log.info("redis link restored after %.1fs", time.monotonic() - down_since)
                down_since = None
                self._restored_at = time.monotonic()
            backoff = 0.1
            now = time.monotonic()
            if self._last_ok and now - self._last_ok > self.ttl:
                self._restored_at = now  # others' keys may have expired meanwhile
            self._last_ok = now
            self._first_beat.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl / 3):
                    await self._wake.wait()
            self._wake.clear()

    async def processes(self, role: str | None = None) -> list[ProcessRecord]:
        """Live processes (optionally of one role), oldest first.

        Raises:
            RegistryUnavailable: Redis did not answer.
        """
        async with self.guard("list"):
            now_ms = int(time.time() * 1000)
            ids: list[Any] = await self.redis.zrangebyscore(self.key("procs"), now_ms, "+inf")
            if not ids:
                return []
            raw: list[Any] = await self.redis.mget([self.key("proc", i.decode()) for i in ids])
        records = []
        for blob in raw:
            if blob is None:
                continue
            try:
                rec = ProcessRecord.from_info(unpack(blob))
            except (KeyError, TypeError, ValueError):
                continue
            if role is None or rec.role == role:
                records.append(rec)
        records.sort(key=lambda r: (r.role, r.host, r.started))
        return records

    @contextlib.asynccontextmanager
    async def guard(self, op: str) -> AsyncIterator[None]:
        """Map Redis failures to ``RegistryUnavailable`` and count the round trip.

        While the heartbeat finds the one primary unreachable, calls fail at once instead of
        each waiting out socket timeouts (degraded mode answers fast). Not in Cluster mode,
        where the other primaries may still serve the call.
        """
        if self._down and not self._links.sharded:
            metrics.REDIS_ERRORS.labels(op).inc()
            raise RegistryUnavailable(f"redis unavailable during {op}: heartbeat failing")
        try:
            yield
        except (*_REDIS_ERRORS, RedisError) as exc:
            metrics.REDIS_ERRORS.labels(op).inc()
            # Part of the deployment failed (in Cluster mode maybe one primary): others may
            # not have been able to refresh their keys either.
            self._restored_at = time.monotonic()
            raise RegistryUnavailable(f"redis unavailable during {op}: {exc}") from exc
        metrics.REDIS_ROUNDTRIPS.labels(op).inc()

    # ---------------------------------------------------------------- inbox
    def handle(self, cls: type[M], handler: TypedHandler[M], ordered: bool = False) -> None:
        """Handle inbox messages of contract ``cls`` (routed by ``cls.TYPE``).

        The payload is decoded as ``cls`` before ``handler(msg, sender_id)`` runs; a payload that
        does not fit (another version, wrong fields) is counted in ``INBOX_DROPPED``
        (``bad_payload``) and a request gets a ``contract`` error. A request's reply is the
        handler's return value (a contract, or None).

        ``ordered``: messages of this type from one sender are handled one after another, in
        arrival order, even while the handler awaits (at most ``LANE_LIMIT`` wait per sender;
        beyond, they are dropped as ``lane_full``). Otherwise each runs in its own task.
        """
        if not cls.TYPE:
            raise TypeError(f"{cls.__name__} has no TYPE: it cannot be an inbox message")
        self._routes[cls.TYPE] = _Route(cls, handler, ordered,
                                        not inspect.iscoroutinefunction(handler))

    async def subscribe(self, channel: str, handler: RawHandler, broadcast: bool = False) -> None:
        """Receive every message published on ``channel`` (kept across reconnects).

        ``broadcast``: the channel goes to every process (classic pub/sub in every mode, which
        is also what a Lua script's ``PUBLISH`` reaches); otherwise it is sharded pub/sub in
        Cluster mode, delivered only through the node that owns the channel's slot.
        """
        self._channels[channel] = handler
        if broadcast:
            self._broadcasts.add(channel)
        if self._sub is not None and self._subscribed.is_set():
            with contextlib.suppress(*_REDIS_ERRORS, RedisError):
                await self._sub.add(channel, broadcast)

    async def unsubscribe(self, channel: str) -> None:
        self._broadcasts.discard(channel)
        if self._channels.pop(channel, None) is not None and self._sub is not None:
            with contextlib.suppress(*_REDIS_ERRORS, RedisError):
                await self._sub.remove(channel)

    async def publish(self, channel: str, data: bytes, broadcast: bool = False) -> int:
        """Publish raw bytes; returns the number of receivers (see ``subscribe``; a broadcast
        in Cluster mode counts only the receivers on the node that took it)."""
        async with self.guard("publish"):
            return await self._links.publish(channel, data, broadcast)

    def queue_publish(self, pipe: Any, channel: str, data: bytes, broadcast: bool = False) -> None:
        """Add a publish to a pipeline of ``self.redis`` (see ``publish``)."""
        self._links.queue_publish(pipe, channel, data, broadcast)

    async def durable(self, key: str, build: Build) -> list[Any]:
        """Run the commands ``build`` queues on a pipeline (all on ``key``'s slot, in order,
        not as a transaction: use one script for atomicity), then wait until the required
        replicas hold them (``REDIS_MIN_REPLICAS``, bounded by ``WAIT``).

        Returns:
            The commands' results.

        Raises:
            RegistryUnavailable: Redis did not answer, or too few replicas confirmed in time;
                the write may have happened and must not be acknowledged as done.
        """
        async with self.guard("durable"):
            return await self._links.durable(key, build)

    def durable_script(self, lua: str, batch: bool = False) -> DurableScript:
        """A Lua script whose every call is acknowledged only once the required replicas hold
        its writes (see ``durable``); its keys must share one ``tag``. ``batch``: concurrent
        calls share round trips (see ``DurableScript``)."""
        return DurableScript(self, self.redis.register_script(lua), batch)

    async def topology(self) -> dict[str, Any]:
        """The deployment mode and the primary/nodes in use.

        Raises:
            RegistryUnavailable: Redis (or the Sentinels) did not answer.
        """
        async with self.guard("topology"):
            return await self._links.topology()

    async def send(self, target: str, msg: Contract) -> bool:
        """Fire-and-forget contract ``msg`` to ``target``'s inbox; False when nobody listens.

        Raises:
            RegistryUnavailable: Redis did not answer.
        """
        data = encode(Envelope(Kind.SEND, msg.TYPE, 0, "", self.id, msg.to_array()))
        if self._link is not None and self._same_host(target) and self._link.send(target, data):
            metrics.INBOX_DIRECT.inc()
            return True
        return await self.publish(self.inbox(target), data) > 0

    def _same_host(self, process_id: str) -> bool:
        """Whether ``process_id`` (``role:host:pid:token``) runs on this host."""
        parts = process_id.split(":")
        return len(parts) == 4 and parts[1] == self.host

    async def request(self, target: str, msg: Contract, *, reply: type[R],
                      timeout: float = 2.0) -> R:
        """Send request ``msg`` to ``target`` and wait for its reply, decoded as ``reply``.

        Raises:
            NoListener: the target's inbox has no subscriber.
            RequestTimeout: no reply within ``timeout``.
            RemoteError: the target answered with an error (``contract``: it could not read
                ``msg``).
            ContractError: the reply does not fit ``reply``.
            RegistryUnavailable: Redis did not answer.
        """
        return reply.from_array(await self._call(target, msg.TYPE, msg.to_array(), timeout))

    async def _call(self, target: str, msg_type: str, payload: Any, timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            raise RegistryUnavailable("inbox not subscribed (redis down?)") from None
        self._next_request += 1
        rid = self._next_request
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            env = Envelope(Kind.REQUEST, msg_type, rid, self.inbox(self.id), self.id, payload)
            if await self.publish(self.inbox(target), encode(env)) == 0:
                raise NoListener(f"no process listens on {target}")
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                raise RequestTimeout(
                    f"{msg_type} to {target}: no reply within {timeout:g}s") from None
        finally:
            self._pending.pop(rid, None)

    async def _subscriber_loop(self) -> None:
        backoff = 0.1
        failed = False
        while True:
            sub = self._links.subscriber(self._dispatch, failed)
            try:
                done = [self.inbox(self.id), *self._channels]
                await sub.open([(c, c in self._broadcasts) for c in done])
                # Channels added while those commands were in flight are not in ``done``.
                while missing := [c for c in self._channels if c not in done]:
                    for channel in missing:
                        await sub.add(channel, channel in self._broadcasts)
                    done += missing
                self._sub = sub
                self._subscribed.set()
                backoff = 0.1
                failed = False
                await sub.pump()
            except asyncio.CancelledError:
                raise
            except (*_REDIS_ERRORS, RedisError) as exc:
                metrics.REDIS_ERRORS.labels("subscribe").inc()
                if self._subscribed.is_set():
                    log.warning("inbox subscription lost (%s); resubscribing", exc)
                self._subscribed.clear()
                self._sub = None
                failed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                await sub.aclose()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel", b"")
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        data = msg.get("data")
        if not isinstance(data, bytes):
            return
        raw = self._channels.get(channel)
        if raw is not None:
            self._run(raw, data)
            return
        self._on_inbox(data)

    def _on_inbox(self, data: bytes) -> None:
        """An inbox message, from Redis or straight from a process on this host."""
        env = decode(data)
        if env is None:
            metrics.INBOX_DROPPED.labels("malformed").inc()
            return
        if env.kind in (Kind.REPLY_OK, Kind.REPLY_ERROR):
            fut = self._pending.get(env.request_id)
            if fut is not None and not fut.done():
                if env.kind is Kind.REPLY_OK:
                    fut.set_result(env.payload)
                else:
                    err = env.payload if isinstance(env.payload, dict) else {}
                    fut.set_exception(RemoteError(str(err.get("code", "error")),
                                                  str(err.get("message", ""))))
            return
        route = self._routes.get(env.type)
        if route is not None:
            self._dispatch_typed(route, env)
            return
        metrics.INBOX_DROPPED.labels("unknown_type").inc()
        if env.kind is Kind.REQUEST:
            self._tasks.spawn(self._reply(env, Kind.REPLY_ERROR,
                                          {"code": "unknown_type", "message": env.type}))

    def _dispatch_typed(self, route: _Route, env: Envelope) -> None:
        try:
            msg = route.cls.from_array(env.payload)
        except ContractError as exc:
            metrics.INBOX_DROPPED.labels("bad_payload").inc()
            log.debug("inbox %s from %s: %s", env.type, env.sender, exc)
            if env.kind is Kind.REQUEST:
                self._tasks.spawn(self._reply(env, Kind.REPLY_ERROR, exc.to_dict()))
            return
        if route.ordered:
            key = (env.type, env.sender)
            lane = self._lanes.get(key)
            if lane is not None:
                if len(lane) >= LANE_LIMIT or self._laned >= MAX_LANED:
                    self._refuse(env, "lane_full", "ordered inbox lane full")
                    return
                lane.append((route, env, msg))
                self._laned += 1
                return
        if route.inline and env.kind is Kind.SEND:
            # Nothing to answer and nothing to await: no task, and order kept for free.
            self._run_inline(route, env, msg)
            return
        if len(self._tasks) >= MAX_INFLIGHT:
            self._refuse(env, "busy", "inbox overloaded")
            return
        if route.ordered:
            lane = self._lanes[(env.type, env.sender)] = deque()
            self._tasks.spawn(self._drain((env.type, env.sender), lane, route, env, msg))
        else:
            self._tasks.spawn(self._handle_typed(route, env, msg))

    def _refuse(self, env: Envelope, reason: str, message: str) -> None:
        metrics.INBOX_DROPPED.labels(reason).inc()
        if env.kind is Kind.REQUEST:
            self._tasks.spawn(self._reply(env, Kind.REPLY_ERROR,
                                          {"code": reason, "message": message}))

    def _run_inline(self, route: _Route, env: Envelope, msg: Contract) -> None:
        try:
            result = route.handler(msg, env.sender)
        except Exception:
            log.exception("inbox handler for %s failed", env.type)
            return
        if inspect.isawaitable(result):
            self._tasks.spawn(result)

    async def _drain(self, key: tuple[str, str], lane: deque[_Laned], route: _Route,
                     env: Envelope, msg: Contract) -> None:
        """Handle one sender's ordered messages of one type, the first given, then the lane's
        (which fills meanwhile), until the lane is empty; then the lane goes."""
        try:
            await self._handle_typed(route, env, msg)
            while lane:
                route, env, msg = lane.popleft()
                self._laned -= 1
                await self._handle_typed(route, env, msg)
        finally:
            self._laned -= len(lane)
            del self._lanes[key]

    async def _handle_typed(self, route: _Route, env: Envelope, msg: Contract) -> None:
        try:
            result = route.handler(msg, env.sender)
            if inspect.isawaitable(result):
                result = await result
            if result is not None and not isinstance(result, Contract):
                raise TypeError(f"handler answered a {type(result).__name__}, not a contract")
        except HubbubError as exc:
            if env.kind is Kind.REQUEST:
                await self._reply(env, Kind.REPLY_ERROR, exc.to_dict())
            return
        except Exception as exc:
            log.exception("inbox handler for %s failed", env.type)
            if env.kind is Kind.REQUEST:
                await self._reply(env, Kind.REPLY_ERROR,
                                  {"code": "internal", "message": type(exc).__name__})
            return
        if env.kind is Kind.REQUEST:
            await self._reply(env, Kind.REPLY_OK, None if result is None else result.to_array())

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception:
            log.exception("channel handler failed")
            return
        if inspect.isawaitable(result):
            self._tasks.spawn(result)

    async def _reply(self, env: Envelope, kind: Kind, payload: Any) -> None:
        reply = Envelope(kind, env.type, env.request_id, "", self.id, payload)
        with contextlib.suppress(RegistryUnavailable):
            await self.publish(env.reply_to, encode(reply))

