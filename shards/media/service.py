"""The shard's media service: UDP socket, ``media.call`` inbox handler, timers, pushes.

Contract with the spaces gateway (``hubbub.contracts.media``, see the README, "Media plane"):
the gateway requests a ``MediaCall`` and forwards the reply's messages to the socket; messages for
other sockets travel as ``MediaPush`` to their gateway, in order, from one pusher task. On drain
every session's gateway gets ``MediaLost`` so it can close the socket with 1012 and the client
reconnects onto a live shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from hubbub.contracts.media import MediaCall, MediaCallReply, MediaLost, MediaMessage, MediaPush
from hubbub.errors import HubbubError, RegistryError, ServiceError
from hubbub.net import listen_socket
from hubbub.ops import Request as OpsRequest, Response as OpsResponse
from hubbub.runtime import Context
from shards.media import metrics
from shards.media.metrics import Counts
from shards.media.mux import UdpMux
from shards.media.router import OPS, MediaError, MediaRouter
from shards.media.stack import new_certificate


__all__ = ["MediaService"]

log = logging.getLogger("hubbub.media")

PUSH_QUEUE = 10000
TICK = 1.0
SWEEP_EVERY = 5.0


class MediaService:
    """The WebRTC SFU of one shard."""

    name = "media"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.counts = Counts()
        self.mux = UdpMux(self.counts)
        self.router: MediaRouter | None = None
        self._pushes: asyncio.Queue[tuple[str, str, list[Any]]] = asyncio.Queue(PUSH_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self._missing: dict[str, int] = {}
        self._tcp: asyncio.Server | None = None

    # ------------------------------------------------------------- service
    async def start(self) -> None:
        cfg = self.ctx.cfg
        ports_range = cfg.slot_ports(self.ctx.slot or 0)
        last: OSError | None = None
        for port in ports_range:
            try:
                await self.mux.open(cfg.rtc_listen_ip, port)
                break
            except OSError as exc:
                last = exc
        else:
            raise ServiceError(f"media: no free UDP port in {ports_range.start}.."
                               f"{ports_range.stop - 1}: {last}")
        tcp_port = await self._listen_tcp(ports_range)
        certificate = new_certificate()  # one per shard, ~5 ms
        self.router = MediaRouter(self.mux, certificate, self.counts, cfg.rtc_announced_ip,
                                  tcp_port, cfg.media_max_speakers)
        self.ctx.registry.handle(MediaCall, self._on_call)
        self.ctx.ops.route("/media", self._admin, admin=True)
        ports = dict(self.ctx.registry.presence_info().get("ports") or {})
        ports.update(webrtc_udp=self.mux.port, webrtc_tcp=tcp_port)
        self.ctx.registry.set_info(media={"udp": self.mux.port, "tcp": tcp_port}, ports=ports)
        self._tasks = [asyncio.ensure_future(self._tick_loop()),
                       asyncio.ensure_future(self._push_loop())]
        log.info("media: UDP %s:%d, TCP %d, announcing %s", cfg.rtc_listen_ip, self.mux.port,
                 tcp_port, cfg.rtc_announced_ip)

    async def _listen_tcp(self, ports: range) -> int:
        """The ICE-TCP listener: the UDP port's number if free, else another of the slice."""
        loop = asyncio.get_running_loop()
        for port in [self.mux.port] + [p for p in ports if p != self.mux.port]:
            try:
                sock = listen_socket(self.ctx.cfg.rtc_listen_ip, port, reuse_port=False)
                self._tcp = await loop.create_server(self.mux.tcp_protocol, sock=sock)
                return port
            except OSError:
                continue
        log.warning("media: no free TCP port in the slice; ICE-TCP disabled")
        return 0

    def healthy(self) -> bool:
        return self.mux.sock is not None and self.router is not None

    def load(self) -> dict[str, Any]:
        r = self.router
        return {"media_sessions": len(r.sessions) if r else 0,
                "media_spaces": len(r.spaces) if r else 0}

    async def drain(self) -> None:
        self._draining = True
        self.ctx.registry.set_info(media=None)
        await self._lose_all("media shard shutting down")

    async def close(self) -> None:
        self._draining = True
        if self.router is not None:
            for sid in list(self.router.sessions):
                self.router.close_session(sid)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self.mux.tcp.values()):
            conn.close()
        if self.mux.sock is not None:
            self.mux.sock.close()
        await asyncio.sleep(0)

    async def _admin(self, request: OpsRequest) -> OpsResponse:
        """Admin view (ops port): this shard's media sessions (at most 1000 listed)."""
        router = self.router
        sessions: dict[str, Any] = {}
        for s in list(router.sessions.values())[:1000] if router else []:
            sessions[s.id] = {
                "gateway": s.gateway, "spaces": s.spaces,
                "send": s.send.state if s.send else None,
                "recv": s.recv.state if s.recv else None,
                "producer": s.producer is not None, "data_producers": len(s.data_producers),
                "consumers": len(s.consumers), "data_consumers": len(s.data_consumers)}
        body = orjson.dumps({"shard": self.ctx.registry.id, "udp": self.mux.port,
                             "tcp": router.tcp_port if router else 0,
                             "sessions": len(router.sessions) if router else 0,
                             "spaces": len(router.spaces) if router else 0,
                             "listed": sessions})
        return OpsResponse(200, body, "application/json")

    # ----------------------------------------------------------------- calls
    def _on_call(self, req: MediaCall, sender: str) -> MediaCallReply:
        label = req.op if req.op in OPS else "unknown"
        if self._draining or self.router is None:
            metrics.CALLS.labels(label, "error").inc()
            raise MediaError("media shard is draining")
        try:
            reply = self.router.call(req)
        except HubbubError:
            metrics.CALLS.labels(label, "error").inc()
            raise
        metrics.CALLS.labels(label, "ok").inc()
        self._queue_pushes()
        return MediaCallReply(_messages(reply))

    def _queue_pushes(self) -> None:
        assert self.router is not None
        for item in self.router.take_pushes():
            try:
                self._pushes.put_nowait(item)
            except asyncio.QueueFull:
                log.warning("media: push queue full; dropping messages for %s", item[1])

    async def _push_loop(self) -> None:
        while True:
            gateway, session, messages = await self._pushes.get()
            try:
                await self.ctx.registry.send(gateway, MediaPush(session, _messages(messages)))
            except RegistryError as exc:
                log.warning("media: push to %s failed: %s", gateway, exc)

    async def _lose_all(self, reason: str) -> None:
        router = self.router
        if router is None:
            return
        lost = [(s.gateway, s.id) for s in router.sessions.values()]
        for gateway, sid in lost:
            with contextlib.suppress(RegistryError):
                await self.ctx.registry.send(gateway, MediaLost(sid, reason))
            router.close_session(sid)

    # ---------------------------------------------------------------- timers
    async def _tick_loop(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY
        while True:
            await asyncio.sleep(TICK)
            try:
                self._tick()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_EVERY
                    await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("media tick failed")

    def _tick(self) -> None:
        router = self.router
        if router is None:
            return
        mono = time.monotonic()
        now = time.time()
        sent = 0
        for t in list(router.transports.values()):
            t.check_consent(mono)
            sent += t.send_reports(now)
        self.counts.rtcp_out += sent
        router.select_speakers()
        self.mux.sweep(mono)
        metrics.flush(self.counts)
        router.update_gauges()

    async def _sweep(self) -> None:
        """Close idle dead sessions, and sessions whose gateway has been gone for two sweeps."""
        router = self.router
        if router is None or not router.sessions:
            return
        for s in router.reap_idle(time.monotonic()):
            log.info("media: dropped idle session %s (no live transport)", s.id)
        try:
            live = {p.id for p in await self.ctx.registry.processes()}
        except RegistryError:
            return
        gateways = {s.gateway for s in router.sessions.values()}
        for gw in gateways:
            if gw in live:
                self._missing.pop(gw, None)
            else:
                self._missing[gw] = self._missing.get(gw, 0) + 1
        for sid, s in list(router.sessions.items()):
            if self._missing.get(s.gateway, 0) >= 2:
                router.close_session(sid)
        self._missing = {g: n for g, n in self._missing.items() if n < 2}


def _messages(messages: list[list[Any]]) -> tuple[MediaMessage, ...]:
    """The router's ``[subject, data]`` pairs as contracts."""
    return tuple(MediaMessage(subject, data) for subject, data in messages)
