"""Local side of space fan-out: this gateway's members per space, channel delivery, positions.

A gateway subscribes to ``space:<uri>:ch`` while it holds members of ``uri``. Every broadcast
(from any gateway, this one included) arrives there once and is forwarded to the local sockets,
so order is the channel's order everywhere. A member that is still joining buffers what arrives
until its catch-up list is sent; membership notices carry the playerId so a joiner never sees a
player twice or a departure of someone it never saw.

Positions: sockets send 21-byte records; each gateway keeps the latest record per player and,
at every tick boundary (wall clock, 15 Hz, the same instants on every gateway), publishes them to
the space channel. ``WINDOW`` later each gateway sends the merged records it received (all
gateways' contributions) to its opted-in sockets as one batch frame. Records arriving after the
window go into the next tick's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.spaces import metrics
from gateway.spaces.client import Client
from hubbub.contracts.spaces import (
    SPACE_CHANNEL,
    Broadcast,
    SpaceFrame,
    SpaceJoined,
    SpaceLeft,
    SpacePositions,
    SpaceProbe,
)
from hubbub.errors import ContractError, RegistryUnavailable
from hubbub.wire.wired.positions import RECORD_SIZE, encode_batch
from registry import Registry


__all__ = ["Hub", "Membership"]

log = logging.getLogger("hubbub.spaces")

TICK_HZ = 15
WINDOW = 0.010
"""Seconds between a tick's publish and its delivery: time for other gateways' records."""
MAX_BUFFER = 1024
PROBE_TIMEOUT = 1.0


@dataclass
class Membership:
    """One socket in one space on this gateway."""

    client: Client
    player_id: int = -1
    known: set[int] | None = None
    """Player ids this socket has been told about; None while the join is in progress."""
    buffer: list[Broadcast] = field(default_factory=list)

    def deliver(self, msg: Broadcast) -> None:
        known = self.known
        if known is None:
            if len(self.buffer) < MAX_BUFFER:
                self.buffer.append(msg)
            return
        if msg.exclude and msg.exclude == self.client.session:
            return
        if type(msg) is SpaceJoined:
            if msg.player_id in known:
                return
            known.add(msg.player_id)
        elif type(msg) is SpaceLeft:
            if msg.player_id not in known:
                return
            known.discard(msg.player_id)
        self.client.send(msg.frame)

    def synced(self, known: set[int]) -> None:
        """The catch-up list went out: deliver what arrived meanwhile, filtered."""
        self.known = known
        pending, self.buffer = self.buffer, []
        for msg in pending:
            self.deliver(msg)


class Hub:
    """Space channels and position ticks of one gateway."""

    def __init__(self, registry: Registry, gate: asyncio.Semaphore) -> None:
        self.registry = registry
        self.gate = gate
        self.local: dict[str, dict[str, Membership]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        self.outgoing: dict[str, dict[int, bytes]] = {}
        self.incoming: dict[str, dict[int, bytes]] = {}
        self._task: asyncio.Task[None] | None = None

    def channel(self, uri: str) -> str:
        return self.registry.key("space", uri, "ch")

    @property
    def players(self) -> int:
        return sum(len(m) for m in self.local.values())

    # --------------------------------------------------------- membership
    async def attach(self, uri: str, client: Client) -> Membership:
        """Register a joining socket (buffering) and make sure the channel is subscribed."""
        members = self.local.setdefault(uri, {})
        m = Membership(client)
        members[client.session] = m
        ready = self._ready.get(uri)
        try:
            if ready is None:
                ready = asyncio.get_running_loop().create_future()
                self._ready[uri] = ready
                try:
                    await self._subscribe(uri)
                finally:
                    if not ready.done():
                        ready.set_result(None)
            else:
                await asyncio.shield(ready)
        except BaseException:
            await self.detach(uri, client)
            raise
        metrics.PLAYERS.set(self.players)
        metrics.SPACES.set(len(self.local))
        return m

    async def detach(self, uri: str, client: Client) -> None:
        members = self.local.get(uri)
        if members is None:
            return
        m = members.pop(client.session, None)
        out = self.outgoing.get(uri)
        if m is not None and out is not None:
            out.pop(m.player_id, None)
        if not members:
            del self.local[uri]
            self._ready.pop(uri, None)
            self.outgoing.pop(uri, None)
            self.incoming.pop(uri, None)
            await self.registry.unsubscribe(self.channel(uri))
        metrics.PLAYERS.set(self.players)
        metrics.SPACES.set(len(self.local))

    async def _subscribe(self, uri: str) -> None:
        await self.registry.subscribe(self.channel(uri), self._handler(uri))
        # SUBSCRIBE is not acknowledged to us: publish a probe and wait for it to come back,
        # so nothing published after this point can be missed (bounded wait).
        nonce = secrets.token_bytes(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = fut
        try:
            await self.publish(uri, SpaceProbe(self.registry.id, nonce))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await fut
        finally:
            self._probes.pop(nonce, None)

    def _handler(self, uri: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            self.dispatch(uri, data)
        return on_message

    def dispatch(self, uri: str, data: bytes) -> None:
        try:
            msg = SPACE_CHANNEL.decode(data)
        except ContractError as exc:
            metrics.CHANNEL_DROPPED.inc()
            log.debug("space %s: %s", uri, exc)
            return
        if type(msg) is SpaceProbe:
            fut = self._probes.get(msg.nonce)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        members = self.local.get(uri)
        if not members:
            return
        if type(msg) is SpacePositions:
            merged = self.incoming.setdefault(uri, {})
            frame = msg.records
            for off in range(0, len(frame) - RECORD_SIZE + 1, RECORD_SIZE):
                merged[frame[off]] = frame[off:off + RECORD_SIZE]
            return
        if not isinstance(msg, SpaceFrame | SpaceJoined | SpaceLeft):
            return
        if type(msg) is SpaceLeft:
            # A record of a departed player must not reach a batch after its player_left
            # (its playerId may be reused at once).
            pending = self.incoming.get(uri)
            if pending is not None:
                pending.pop(msg.player_id, None)
        for m in list(members.values()):
            m.deliver(msg)

    async def publish(self, uri: str, msg: Broadcast | SpaceProbe) -> None:
        """Broadcast to the space on every gateway (raises RegistryUnavailable)."""
        async with self.gate:
            await self.registry.publish(self.channel(uri), SPACE_CHANNEL.encode(msg))

    # ---------------------------------------------------------- positions
    def record(self, uri: str, player_id: int, record: bytes) -> None:
        """Keep the latest stamped record of ``player_id`` for the next tick."""
        self.outgoing.setdefault(uri, {})[player_id] = record
        metrics.POSITION_RECORDS.inc()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _tick_loop(self) -> None:
        period = 1.0 / TICK_HZ
        while True:
            boundary = (math.floor(time.time() / period) + 1) * period
            await asyncio.sleep(max(0.0, boundary - time.time()))
            try:
                await self._publish_tick()
            except RegistryUnavailable as exc:
                log.debug("position tick not published: %s", exc)
            except Exception:  # pragma: no cover - keep ticking whatever happens
                log.exception("position tick failed")
            await asyncio.sleep(max(0.0, boundary + WINDOW - time.time()))
            self._deliver_tick(boundary)

    async def _publish_tick(self) -> None:
        out, self.outgoing = self.outgoing, {}
        if not out:
            return
        gw = self.registry.id
        async with self.gate, self.registry.guard("spaces_positions"):
            async with self.registry.redis.pipeline(transaction=False) as p:
                for uri, records in out.items():
                    self.registry.queue_publish(p, self.channel(uri), SPACE_CHANNEL.encode(
                        SpacePositions(gw, b"".join(records.values()))))
                await p.execute()

    def _deliver_tick(self, boundary: float) -> None:
        incoming, self.incoming = self.incoming, {}
        delivered = False
        for uri, records in incoming.items():
            members = self.local.get(uri)
            if not members or not records:
                continue
            frame = encode_batch(records.values())
            for m in members.values():
                if m.known is not None and m.client.wants_positions:
                    m.client.send_binary(frame)
                    delivered = True
        if delivered:
            metrics.POSITION_TICKS.inc()
            metrics.TICK_LAG.observe(max(0.0, time.time() - boundary))
