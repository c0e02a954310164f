"""Routing between gateways: pushes to B from the socket B's registrations reach, and B's
answers to the process holding A's connection.

* A push to B (PunchHole, FetchLocalAddr, RequestRelay) must leave from the socket B's
  heartbeats reach: the process recorded in B's liveness record, or this one when it shares
  that socket's address (same host, same UDP port), else ``rd.push`` to that process's inbox.
* B's answer is built where it arrives and handed to the process holding A's connection: this
  one, the one a recent push named (``sink_hints``), or the one ``rd:sink:<addr>`` names in
  Redis (``rd.deliver``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from gateway.rendezvous import metrics
from gateway.rendezvous.directory import Directory
from gateway.rendezvous.peers import BindingCache
from gateway.rendezvous.records import MODE_UDP, Live
from gateway.rendezvous.store import Store
from hubbub.contracts.rendezvous import RendezvousDeliver, RendezvousPush
from hubbub.errors import RegistryUnavailable
from hubbub.limits import BoundedMap
from registry import Registry


__all__ = ["Router", "Sink"]


class Sink(Protocol):
    """A client connection that answers can be written to."""

    addr_key: str
    sink: bool

    async def send_message(self, payload: bytes) -> None: ...


class Router:
    """Held connections (sinks) of this process and message routing to other gateways."""

    def __init__(self, registry: Registry, store: Store, directory: Directory,
                 bindings: BindingCache, token: str, udp_port: int,
                 send_udp: Callable[[bytes, str, int], None],
                 stream_of: Callable[[str], Sink | None]) -> None:
        self.registry = registry
        self.bindings = bindings
        self.store = store
        self.directory = directory
        self.token = token
        self.udp_port = udp_port
        self._send_udp = send_udp
        self._stream_of = stream_of
        self.sinks: dict[str, Sink] = {}
        self.hints: BoundedMap[str, str] = BoundedMap(50_000, 35.0)
        registry.handle(RendezvousPush, self._on_push)
        registry.handle(RendezvousDeliver, self._on_deliver)

    # ---------------------------------------------------------------- sinks
    def hold(self, conn: Sink) -> bool:
        """Hold A's connection for B's answer; True when Redis must learn about it."""
        if self.sinks.get(conn.addr_key) is conn:
            return False
        self.sinks[conn.addr_key] = conn
        conn.sink = True
        return True

    def release(self, conn: Sink) -> None:
        if conn.sink and self.sinks.get(conn.addr_key) is conn:
            del self.sinks[conn.addr_key]
        conn.sink = False

    # ----------------------------------------------------------------- push
    async def push(self, peer_id: str, live: Live, data: bytes, sink: str = "") -> bool:
        """Send ``data`` to B from the socket its registrations reach (maybe via a sibling).

        ``sink`` is A's address: the process that pushes remembers who holds A, so B's answer
        reaching that process needs no Redis look-up.
        """
        if live.owner == self.token:
            return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
        rec = await self.directory.resolve(live.owner)
        if rec is None:
            # The owner is gone (B moves to a live gateway with its next heartbeat). A sibling
            # on the same port usually shares its address, and a datagram from anywhere else
            # is merely dropped by B's NAT, so try rather than fail.
            if live.mode == MODE_UDP and live.local_port == self.udp_port:
                metrics.ROUTED.labels("orphan_push").inc()
                return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
            return False
        if (live.mode == MODE_UDP and rec.host == self.registry.host
                and live.local_port == self.udp_port):
            # Same host, same port: our socket has the very source address B knows.
            return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
        # B's binding as this punch read it goes along: B's answer, if it reaches that
        # gateway, is signed without reading the binding again.
        gen, pk = self.bindings.get(peer_id, time.time()) or (b"", b"")
        msg = RendezvousPush(peer_id, live.ip, live.port, live.local_port, live.mode, data,
                             sink, self.registry.id, gen, pk)
        try:
            async with self.store.gate:
                ok = await self.registry.send(rec.id, msg)
        except RegistryUnavailable:
            return False
        if ok:
            metrics.ROUTED.labels("push").inc()
        return ok

    async def _push_local(self, peer_id: str, mode: int, ip: str, port: int, data: bytes) -> bool:
        if mode == MODE_UDP:
            self._send_udp(data, ip, port)
            return True
        conn = self._stream_of(peer_id)
        if conn is None:
            return False
        await conn.send_message(data)
        return True

    async def _on_push(self, msg: RendezvousPush, sender: str) -> None:
        if msg.mode == MODE_UDP and msg.local_port != self.udp_port:
            return
        now = time.time()
        if msg.a_key and msg.holder:
            self.hints.put(msg.a_key, msg.holder, now)
        self.bindings.put(msg.peer_id, msg.gen, msg.pk, now)
        await self._push_local(msg.peer_id, msg.mode, msg.ip, msg.port, msg.data)

    # -------------------------------------------------------------- deliver
    async def deliver(self, a_key: str, data: bytes) -> bool:
        """Hand B's answer to A's held connection, wherever it is."""
        if await self.deliver_local(a_key, data):
            return True
        try:
            owner = self.hints.pop(a_key)
            if owner is None:
                owner = await self.store.sink_owner(a_key)
            if owner is None or owner == self.registry.id:
                metrics.DROPPED.labels("no_sink").inc()
                return False
            async with self.store.gate:
                ok = await self.registry.send(owner, RendezvousDeliver(a_key, data))
        except RegistryUnavailable:
            return False
        if ok:
            metrics.ROUTED.labels("deliver").inc()
        return ok

    async def deliver_local(self, a_key: str, data: bytes) -> bool:
        """Send ``data`` on A's connection if this process holds it (it is then let go)."""
        conn = self.sinks.pop(a_key, None)
        if conn is None:
            return False
        conn.sink = False
        await conn.send_message(data)
        return True

    async def _on_deliver(self, msg: RendezvousDeliver, sender: str) -> None:
        if not await self.deliver_local(msg.a_key, msg.data):
            metrics.DROPPED.labels("no_sink").inc()
