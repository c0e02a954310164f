"""The spaces service of a gateway: Wired WebSocket signalling and HTTP on ``SPACES_PORT``.

Thin asyncio adapter: each socket's messages go through a sans-I/O
``hubbub.wire.wired.admission.Admission`` (parsing, validation, rate limit, abuse,
``resume_audio`` coalescing); this module acts on its events: it applies them to the space state
(``SpaceStore``), fans out through the space channels (``Hub``) and forwards WebRTC subjects to
media shards (``MediaShardClient``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.spaces import deflate, metrics
from gateway.spaces.client import Client
from gateway.spaces.http import HttpRoutes
from gateway.spaces.hub import Hub
from gateway.spaces.media import MediaShardClient
from gateway.spaces.store import MAX_PLAYERS, REDIS_CONCURRENCY, SpaceStore
from hubbub.config import Config
from hubbub.contracts.spaces import KickPlayer, KickReply, SpaceFrame, SpaceJoined, SpaceLeft
from hubbub.errors import RegistryUnavailable
from hubbub.limits import SourceCounter
from hubbub.net import ProxyList, host_port, listen_socket, server_tls
from hubbub.ops import Request as OpsRequest, Response as OpsResponse
from hubbub.runtime import Context
from hubbub.wire.wired import outbound
from hubbub.wire.wired.events import (
    CloseConnection,
    Event,
    LocationRecord,
    Message,
    Rejected,
    ResumeAudio,
)
from hubbub.wire.wired.inbound import MEDIA_SUBJECTS, Limits
from hubbub.wire.wired.positions import stamp
from hubbub.ws_server import HeadFirstConnection


__all__ = ["SpacesService"]

log = logging.getLogger("hubbub.spaces")

WATCH_PERIOD = 0.5
"""Seconds between checks of gateway and shard liveness (dead gateways' players leave)."""
MAX_UNFINISHED = 100_000
"""Leaves that failed while Redis was unreachable, kept for a retry."""
MAX_ALIVE_TTL = 3.0
"""Membership lease of a gateway: its players leave at most this long (+ a watch period) after
it dies. Shorter than the presence TTL so that cleanup stays within 5 s by default."""
_PROFILE: dict[str, tuple[str, Callable[[int, Any], bytes]]] = {
    "set_name": ("name", outbound.player_name),
    "set_avatar": ("avatar", outbound.player_avatar),
    "set_address": ("address", outbound.player_address),
    "set_grounded": ("grounded", outbound.player_grounded),
}
"""Subjects that set one field of the player's profile: the field and its broadcast."""


class SpacesService:
    """Wired host compatible signalling (protocol 0.3.0) for one gateway process."""

    name = "spaces"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg: Config = ctx.cfg
        self.registry = ctx.registry
        gate = asyncio.Semaphore(REDIS_CONCURRENCY)
        self.store = SpaceStore(ctx.registry, gate)
        self.hub = Hub(ctx.registry, gate)
        self.media = MediaShardClient(ctx.registry)
        self.http = HttpRoutes(self.store, self.healthy)
        self.limits = Limits(max_url=self.cfg.spaces_max_url, max_name=self.cfg.spaces_max_name,
                             max_chat=self.cfg.spaces_max_chat)
        self.clients: dict[str, Client] = {}
        self._per_ip: SourceCounter[str] = SourceCounter(self.cfg.spaces_sockets_per_ip)
        self.proxies = ProxyList(self.cfg.trusted_proxies)
        self._next = 0
        self._server: Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._serving = False
        self._alive_ttl = MAX_ALIVE_TTL
        self._unfinished: list[tuple[str, int, str]] = []
        self.port = self.cfg.spaces_port

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        tls = server_tls(cfg.ssl_cert, cfg.ssl_key)
        sock = listen_socket(cfg.bind_host, cfg.spaces_port)
        self.port = sock.getsockname()[1]
        ping = cfg.spaces_idle_timeout / 2
        self._server = await serve(
            self._serve, sock=sock, ssl=tls, process_request=self._process_request,
            max_size=cfg.spaces_max_frame, ping_interval=ping, ping_timeout=ping,
            close_timeout=2, max_queue=32, server_header="hubbub",
            compression=None, extensions=deflate.extensions(),
            create_connection=HeadFirstConnection)
        self._alive_ttl = min(cfg.presence_ttl, MAX_ALIVE_TTL)
        # The lease must exist before the first member does, or another gateway reaps us.
        await self.store.keep_alive(self._alive_ttl)
        with contextlib.suppress(RegistryUnavailable):
            await self.media.refresh()  # serve WebRTC from the first message on
        self.hub.start()
        self._watch = asyncio.ensure_future(self._watch_loop())
        ports = dict(self.registry.presence_info().get("ports") or {})
        ports["spaces"] = self.port
        self.registry.set_info(ports=ports)
        self.ctx.ops.route("/spaces", self._admin_spaces, admin=True)
        self.registry.handle(KickPlayer, self._kick)
        self._serving = True
        log.info("spaces host on %s (%s)", host_port(cfg.bind_host, self.port),
                 "wss" if tls else "ws")

    async def drain(self) -> None:
        """Stop accepting; close sockets (1001) so clients reconnect to another gateway."""
        self._serving = False
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def close(self) -> None:
        self._serving = False
        if self._server is not None:
            self._server.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        await self.hub.close()
        await self.media.close()
        if not self._unfinished and not any(c.spaces for c in self.clients.values()):
            with contextlib.suppress(RegistryUnavailable, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.store.retire()

    def healthy(self) -> bool:
        return self._serving and self._server is not None

    def load(self) -> dict[str, Any]:
        return {"spaces_sockets": len(self.clients), "spaces_players": self.hub.players,
                "spaces_spaces": len(self.hub.local)}

    def _kick(self, kick: KickPlayer, _sender: str) -> KickReply:
        """An operator disconnects a player: close the socket holding it (1008)."""
        client = self.clients.get(kick.socket)
        if client is None:
            return KickReply(False)
        client.abort(1008, "disconnected by an operator")
        return KickReply(True)

    async def _admin_spaces(self, request: OpsRequest) -> OpsResponse:
        """Admin view (ops port): this gateway's spaces, players and media sessions."""
        spaces = {uri: sorted(m.player_id for m in members.values())
                  for uri, members in self.hub.local.items()}
        sessions = {sid: c.shard for sid, c in self.media.sessions.items()}
        body = orjson.dumps({"gateway": self.registry.id, "sockets": len(self.clients),
                             "spaces": spaces, "media_sessions": sessions})
        return OpsResponse(200, body, "application/json")

    # ----------------------------------------------------------------- HTTP
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return await self.http.respond(conn, request)

    # ------------------------------------------------------------ WebSocket
    def _client_ip(self, ws: ServerConnection) -> str:
        peer = str(ws.remote_address[0]) if ws.remote_address else ""
        return self.proxies.client_ip(peer, ws.request.headers if ws.request else None)

    async def _serve(self, ws: ServerConnection) -> None:
        ip = self._client_ip(ws)
        if not self._per_ip.add(ip):
            metrics.ERRORS.labels("too_many_connections").inc()
            metrics.CLOSED.labels("1008").inc()
            with contextlib.suppress(ConnectionClosed):
                await ws.send(outbound.error("too_many_connections",
                                             "too many connections from this address"), text=True)
                await ws.close(1008, "too many connections")
            return
        self._next += 1
        client = Client(f"{self.registry.id}/{self._next}", ws, ip, self.limits,
                        self.cfg.spaces_rate, self.cfg.spaces_burst)
        self.clients[client.session] = client
        metrics.SOCKETS.set(len(self.clients))
        client.start()
        try:
            async for message in ws:
                if client.closing:
                    break
                await self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup(client)
            self._per_ip.remove(ip)

    async def _cleanup(self, client: Client) -> None:
        self.clients.pop(client.session, None)
        metrics.SOCKETS.set(len(self.clients))
        client.closing = True
        for uri in list(client.spaces):
            with contextlib.suppress(RegistryUnavailable):
                await self._leave(client, uri, notify_media=False)
        client.cancel_timer()
        self.media.detach(client)
        await client.flush()
        await client.stop()

    async def _on_message(self, client: Client, message: str | bytes) -> None:
        now = time.monotonic()
        client.admission.receive(message, now)
        await self._handle_events(client, client.admission.events_received(), now)
        self._arm_timer(client)

    async def _handle_events(self, client: Client, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Message):
                metrics.MESSAGES_IN.labels(event.subject).inc()
                try:
                    await self._dispatch(client, event.subject, event.data, now)
                except RegistryUnavailable as exc:
                    log.warning("%s from %s failed: %s", event.subject, client.session, exc)
                    client.send_error("unavailable", "the cluster registry is unreachable; retry",
                                      event.subject)
                except Exception:
                    # A bug must cost one message, not the connection or the gateway.
                    log.exception("%s from %s failed", event.subject, client.session)
                    client.send_error("internal", "internal error", event.subject)
            elif isinstance(event, LocationRecord):
                metrics.MESSAGES_IN.labels("location").inc()
                self._on_record(client, event.data, now)
            elif isinstance(event, ResumeAudio):
                metrics.MESSAGES_IN.labels("resume_audio").inc()
                await self.media.handle(client, "resume_audio", None)
            elif isinstance(event, Rejected):
                metrics.MESSAGES_IN.labels(
                    "rate_limited" if event.code == "rate_limited" else "invalid").inc()
                client.send_error(event.code, event.message, event.subject)
            elif isinstance(event, CloseConnection):
                client.abort(event.code, event.reason)

    def _arm_timer(self, client: Client) -> None:
        """Run the connection's timer (a trailing coalesced resume_audio) when it is due."""
        due = client.admission.get_timer()
        if due is None or client.timer is not None or client.closing:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            client.timer = None
            now = time.monotonic()
            client.admission.handle_timer(now)
            events = client.admission.events_received()
            if events and not client.closing:
                client.spawn(self._handle_events(client, events, now))
            # The loop may call back a hair before the deadline: then nothing was due yet, and
            # the trailing resume_audio must not be lost.
            self._arm_timer(client)

        client.timer = loop.call_later(max(0.0, due - time.monotonic()), fire)

    def _reject(self, client: Client, code: str, message: str, subject: str | None,
                now: float) -> None:
        client.admission.reject(code, message, subject, now)
        for event in client.admission.events_received():
            if isinstance(event, Rejected):
                client.send_error(event.code, event.message, event.subject)
            elif isinstance(event, CloseConnection):
                client.abort(event.code, event.reason)

    async def _dispatch(self, client: Client, subject: str, data: Any, now: float) -> None:
        if subject == "join":
            await self._join(client, data, now)
        elif subject == "leave":
            if data not in client.spaces:
                self._reject(client, "not_joined", "not a member of that space", subject, now)
                return
            await self._leave(client, data)
        elif subject == "chat":
            ts = int(time.time() * 1000)
            for uri, pid in list(client.spaces.items()):
                await self.hub.publish(uri, SpaceFrame(outbound.player_chat(pid, data, ts)))
        elif subject in _PROFILE:
            field, builder = _PROFILE[subject]
            setattr(client, field, data)
            await self._profile(client, field, data, builder)
        elif subject == "subscribe_positions":
            client.positions = data
        elif subject in MEDIA_SUBJECTS:
            await self.media.handle(client, subject, data)

    async def _profile(self, client: Client, field: str, value: Any,
                       builder: Callable[[int, Any], bytes]) -> None:
        """Store a profile field in every joined space and broadcast it (echo included)."""
        memberships = list(client.spaces.items())
        await self.store.update(memberships, client.session, field, value)
        for uri, pid in memberships:
            await self.hub.publish(uri, SpaceFrame(builder(pid, value)))

    async def _join(self, client: Client, uri: str, now: float) -> None:
        if uri in client.spaces:
            return  # the original treats a repeated join as a no-op
        if len(client.spaces) >= self.cfg.spaces_per_socket:
            self._reject(client, "too_many_spaces",
                         f"a connection may join at most {self.cfg.spaces_per_socket} spaces",
                         "join", now)
            return
        membership = await self.hub.attach(uri, client)
        try:
            pid, members = await self.store.join(uri, client.session, client.name,
                                                 client.avatar, client.address, client.grounded)
        except BaseException:
            await self.hub.detach(uri, client)
            raise
        if pid < 0:
            await self.hub.detach(uri, client)
            client.send_error("space_full", f"the space is full ({MAX_PLAYERS} players)", "join")
            return
        if client.closing:
            await self.store.leave(uri, pid, client.session)
            await self.hub.detach(uri, client)
            return
        membership.player_id = pid
        client.spaces[uri] = pid
        try:
            await self.hub.publish(uri, SpaceJoined(
                pid, client.session,
                outbound.player_joined(pid, client.name, client.avatar, client.address)))
        except RegistryUnavailable:
            await self._leave(client, uri, notify_media=False)
            raise
        known = {pid}
        for m in sorted(members, key=lambda m: m.player_id):
            if m.player_id != pid:
                known.add(m.player_id)
                client.send(outbound.player_joined(m.player_id, m.name, m.avatar, m.address,
                                                   before_you=True))
        membership.synced(known)
        await self.media.lifecycle(client, "join", {"uri": uri, "playerId": pid})
        client.send(outbound.join_success(uri, pid))

    async def _leave(self, client: Client, uri: str, notify_media: bool = True) -> None:
        pid = client.spaces.pop(uri, None)
        await self.hub.detach(uri, client)
        if pid is None:
            return
        try:
            await self._remove(uri, pid, client.session)
        except RegistryUnavailable:
            # Never leave a ghost player behind: the watcher retries once Redis is back.
            if len(self._unfinished) < MAX_UNFINISHED:
                self._unfinished.append((uri, pid, client.session))
            raise
        if notify_media:
            await self.media.lifecycle(client, "leave", {"uri": uri})

    async def _remove(self, uri: str, pid: int, session: str) -> None:
        if await self.store.leave(uri, pid, session):
            await self.hub.publish(uri, SpaceLeft(pid, outbound.player_left(pid)))

    async def _finish_leaves(self) -> None:
        while self._unfinished:
            uri, pid, session = self._unfinished[0]
            await self._remove(uri, pid, session)
            self._unfinished.pop(0)

    def _on_record(self, client: Client, data: bytes, now: float) -> None:
        if not client.spaces:
            self._reject(client, "not_joined", "join a space before sending positions", None,
                         now)
            return
        # The space whose playerId the client wrote in byte 0, else the first joined space.
        uri = next((u for u, p in client.spaces.items() if p == data[0]), None)
        if uri is None:
            uri = next(iter(client.spaces))
        pid = client.spaces[uri]
        record = stamp(data, pid)
        if record is None:
            return
        if client.positions is None:
            client.positions = True
        self.hub.record(uri, pid, record)

    # -------------------------------------------------------------- watcher
    async def _watch_loop(self) -> None:
        last_lease = time.monotonic()
        while True:
            await asyncio.sleep(min(WATCH_PERIOD, self._alive_ttl / 3))
            try:
                if time.monotonic() - last_lease >= self._alive_ttl / 3:
                    last_lease = time.monotonic()
                    joined = [c for c in self.clients.values() if c.spaces]
                    listed = await self.store.keep_alive(self._alive_ttl)
                    if not listed and joined:
                        self._reaped(joined)
                await self._watch_once()
            except RegistryUnavailable as exc:
                log.debug("liveness check skipped: %s", exc)
            except Exception:  # pragma: no cover - the watcher must survive anything
                log.exception("spaces liveness check failed")

    async def _watch_once(self) -> None:
        await self._finish_leaves()
        if self.registry.settling:
            # Right after an outage or fail-over, leases and presence that expired meanwhile
            # are about to be refreshed: judging peers dead now would drop live sessions.
            return
        self.media.update_shards(await self.registry.processes("shard"))
        for gw in await self.store.dead_gateways():
            await self._reap(gw)

    def _reaped(self, joined: list[Client]) -> None:
        """Another gateway took us for dead (a long Redis outage): our players are gone from
        the space state, so close their sockets; the clients reconnect as new players."""
        log.warning("this gateway's players were removed by another gateway; closing %d sockets",
                    len(joined))
        for client in joined:
            client.abort(1012, "spaces state lost")

    async def _reap(self, gateway: str) -> None:
        """Remove a dead gateway's players everywhere (only the claim winner gets here)."""
        spaces = await self.store.claim_reap(gateway)
        for uri in spaces:
            for pid in await self.store.reap_space(gateway, uri):
                metrics.REAPED.inc()
                await self.hub.publish(uri, SpaceLeft(pid, outbound.player_left(pid)))
        await self.store.forget_gateway(gateway)
        if spaces:
            log.info("removed the players of dead gateway %s from %d spaces", gateway,
                     len(spaces))
