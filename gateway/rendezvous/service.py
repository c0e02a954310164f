"""The ID server's asyncio adapter: sockets, Redis and timers around the sans-I/O core.

Layers (each one only calls down):

* ``core.RendezvousCore`` — hbbs's rules; messages in, answers and effects out;
* ``peers.PeerTable``, ``limits``, ``logic.RelayChoice`` — the core's parts;
* ``routing.Router`` (pushes and answers between gateways), ``directory.Directory`` (who is
  where), ``rebinding.Rebinding`` (change ID, binding news), ``store.Store`` (Redis keys);
* this module: listeners and connections, running the effects, the flush timer.

Heartbeats never wait on Redis: liveness is kept in the core's bounded peer table and flushed
in one pipeline per second, only for peers whose address or owner changed or whose TTL needs
extending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from gateway.rendezvous import metrics
from gateway.rendezvous.admin import local_command, ops_handler
from gateway.rendezvous.conns import Acceptor, Closed, Conn, TcpConn, WsConn
from gateway.rendezvous.core import (
    KEEP_ALIVE,
    RESP_KNOWN,
    RESP_REQUEST_PK,
    HoleSent,
    LookupHeartbeat,
    Push,
    Register,
    RendezvousCore,
    Rules,
    a_key,
    punch_failure,
    reg_response,
)
from gateway.rendezvous.directory import Directory
from gateway.rendezvous.logic import RelayChoice, parse_mask
from gateway.rendezvous.peers import LocalPeer
from gateway.rendezvous.rebinding import Rebinding
from gateway.rendezvous.records import MODE_STREAM, Live
from gateway.rendezvous.routing import Router
from gateway.rendezvous.store import REG_UUID_MISMATCH, Store
from hubbub.contracts.rendezvous import AdminCommand, AdminReply
from hubbub.errors import RegistryError, RegistryUnavailable
from hubbub.keys import ServerKey, server_key
from hubbub.limits import BoundedMap, SourceCounter
from hubbub.net import ProxyList, listen_socket
from hubbub.runtime import Context
from hubbub.tasks import TaskSet
from hubbub.udp import DatagramEndpoint
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.crypto import ServerKeyExchange, sign_id_pk
from hubbub.wire.rustdesk.framing import DEFAULT_MAX_FRAME
from hubbub.wire.rustdesk.messages import message, parse, pb
from hubbub.wire.rustdesk.stream import RendezvousStream
from hubbub.ws_server import HeadFirstConnection


__all__ = ["LocalPeer", "RendezvousService"]

log = logging.getLogger("hubbub.rendezvous")

Result = pb.RegisterPkResponse

MAX_CONNECTIONS = 20_000
MAX_CONNS_PER_IP = 256
IDLE_TIMEOUT = 30.0
NAT_TIMEOUT = 10.0


class RendezvousService:
    """hbbs on every gateway: ports ``-p`` (UDP+TCP), ``-p - 1`` (TCP), ``-p + 2`` (WS)."""

    name = "rendezvous"

    def __init__(self, ctx: Context, key: ServerKey | None = None) -> None:
        self.ctx = ctx
        self.cfg = cfg = ctx.cfg
        self.registry = ctx.registry
        self.store = Store(ctx.registry)
        self.key = key if key is not None else server_key(
            "-" if cfg.key is None else cfg.key, Path(cfg.data_dir))
        self.token = ctx.registry.id.rsplit(":", 1)[-1]
        self.udp_port = cfg.rendezvous_port
        self.core = RendezvousCore(
            Rules(serial=cfg.serial, rendezvous_servers=tuple(cfg.rendezvous_servers),
                  network=parse_mask(cfg.mask), local_ip=cfg.local_ip,
                  licence=self.key.licence, token=self.token, udp_port=self.udp_port),
            RelayChoice(cfg.relay_servers, cfg.always_use_relay))
        self.proxies = ProxyList(cfg.trusted_proxies)
        self.streams: dict[str, Conn] = {}
        self.conns: set[Conn] = set()
        self.conns_per_ip: SourceCounter[str] = SourceCounter(MAX_CONNS_PER_IP)
        self.signed: BoundedMap[str, bytes] = BoundedMap(50_000, 30.0)
        self._tasks = TaskSet(log, "rendezvous")
        self.directory = Directory(ctx.registry, self.store, self.core.relays)
        self.router = Router(ctx.registry, self.store, self.directory, self.core.peers.bindings,
                             self.token, self.udp_port, self._send_udp_to, self.streams.get)
        self.rebinding = Rebinding(self.store, self.core, self.streams, self._tasks)
        self.udp: DatagramEndpoint | None = None
        self._udp_v6 = False
        self._servers: list[asyncio.Server] = []
        self._ws: Server | None = None
        self._bg: list[asyncio.Task[None]] = []
        self._draining = False
        self._up = False
        self._wake = asyncio.Event()
        self._heartbeat_fast = self.core.heartbeat_fast  # bound once: called per datagram
        ctx.registry.handle(AdminCommand, self._on_admin)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        host = cfg.bind_host
        try:
            usock = listen_socket(host, cfg.rendezvous_port, socket.SOCK_DGRAM, cfg.rmem)
        except OSError:
            if host != "::":
                raise
            host = "0.0.0.0"  # no IPv6 on this host: IPv4 only, as hbbs falls back
            usock = listen_socket(host, cfg.rendezvous_port, socket.SOCK_DGRAM, cfg.rmem)
        self._udp_v6 = usock.family == socket.AF_INET6
        self.udp = DatagramEndpoint(usock, self.on_datagram)
        main = await loop.create_server(lambda: Acceptor(self, True),
                                        sock=listen_socket(host, cfg.rendezvous_port,
                                                           socket.SOCK_STREAM))
        nat = await loop.create_server(lambda: Acceptor(self, False),
                                       sock=listen_socket(host, cfg.nat_port, socket.SOCK_STREAM))
        self._servers = [main, nat]
        self._ws = await serve(self._ws_handler, sock=listen_socket(host, cfg.ws_port,
                                                                    socket.SOCK_STREAM),
                               max_size=DEFAULT_MAX_FRAME, ping_interval=None,
                               process_request=self._ws_admit,
                               create_connection=HeadFirstConnection)
        reg = self.registry
        self.ctx.ops.route("/rendezvous/admin", ops_handler(reg, self.store, cfg), admin=True)
        # Subscribe once the inbox is up (a channel added mid-subscribe could be missed); the
        # directory loop also reloads the settings every few seconds as a safety net.
        await reg.wait_ready(2.0)
        await reg.subscribe(self.store.admin_channel, self._on_settings_changed, broadcast=True)
        await reg.subscribe(self.store.bindings_channel, self.rebinding.on_news, broadcast=True)
        ports = dict(reg.presence_info().get("ports") or {})
        ports.update(rendezvous=cfg.rendezvous_port, rendezvous_udp=cfg.rendezvous_port,
                     rendezvous_nat=cfg.nat_port, rendezvous_ws=cfg.ws_port)
        reg.set_info(ports=ports)
        with contextlib.suppress(RegistryError):
            await self.directory.load_settings()
        self._bg = [asyncio.create_task(self._timer_loop(), name="rd-timer"),
                    asyncio.create_task(self.directory.directory_loop(), name="rd-directory"),
                    asyncio.create_task(self.directory.probe_loop(), name="rd-probe")]
        self._up = True
        log.info("rendezvous on udp/tcp %d, tcp %d, ws %d; licence key %s", cfg.rendezvous_port,
                 cfg.nat_port, cfg.ws_port, "required" if self.key.licence else "not required")

    async def drain(self) -> None:
        self._draining = True
        for srv in self._servers:
            srv.close()
        if self._ws is not None:
            self._ws.close(close_connections=False)
        with contextlib.suppress(RegistryError):
            await self.flush_now()
        while any(c.sink for c in self.conns):
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        self._up = False
        for task in self._bg:
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        self._tasks.cancel()
        for srv in self._servers:
            srv.close()
        if self._ws is not None:
            self._ws.close()
        if self.udp is not None:
            self.udp.close()

    def healthy(self) -> bool:
        return self._up

    def load(self) -> dict[str, Any]:
        return {"rd_peers": len(self.core.peers), "rd_conns": len(self.conns),
                "rd_streams": len(self.streams)}

    # ------------------------------------------------------------------ UDP
    def on_datagram(self, data: bytes, raw_addr: tuple[Any, ...]) -> None:
        now = time.time()
        answer = self._heartbeat_fast(data, raw_addr, now)
        if answer is not None:
            if self.udp is not None:
                self.udp.send(answer, raw_addr)
            return
        ip, port = addrmangle.normalize(raw_addr)
        for effect in self.core.datagram(data, ip, port, now, raw_addr):
            if type(effect) is bytes:
                self._send_udp(effect, raw_addr)
            else:
                self._run(effect, raw_addr)
        if self.core.peers.urgent and not self._wake.is_set():
            self._wake.set()

    def _run(self, effect: object, raw_addr: tuple[Any, ...]) -> None:
        if isinstance(effect, LookupHeartbeat):
            self._tasks.spawn(self._lookup_heartbeat(effect, raw_addr))
        elif isinstance(effect, Register):
            self._tasks.spawn(self._udp_register(effect, raw_addr))
        elif isinstance(effect, HoleSent):
            self._tasks.spawn(self._udp_hole_sent(effect))

    def _send_udp(self, data: bytes, raw_addr: tuple[Any, ...]) -> None:
        if self.udp is not None:
            self.udp.send(data, raw_addr)

    def _send_udp_to(self, data: bytes, ip: str, port: int) -> None:
        """To ``ip:port`` from our socket (IPv4 peers are mapped on a ``::`` socket)."""
        if self._udp_v6 and ":" not in ip:
            self._send_udp(data, (f"::ffff:{ip}", port, 0, 0))
        else:
            self._send_udp(data, (ip, port))

    async def _lookup_heartbeat(self, effect: LookupHeartbeat, raw_addr: tuple[Any, ...]) -> None:
        """A heartbeat for a peer this process has not heard: trust Redis's key binding."""
        try:
            rec = await self.store.peer(effect.peer_id)
        except RegistryUnavailable:
            rec = None
        for data in self.core.heartbeat_looked_up(effect, rec, time.time()):
            self._send_udp(data, raw_addr)
        self._wake.set()

    async def _udp_register(self, reg: Register, raw_addr: tuple[Any, ...]) -> None:
        try:
            result, _gen = await self._register(reg)
        finally:
            self.core.registering -= 1
        self._send_udp(reg_response(result), raw_addr)

    async def _register(self, reg: Register) -> tuple[int, bytes]:
        """Run a ``Register`` effect against Redis: (result, binding generation)."""
        if reg.limited:
            try:
                rec = await self.store.peer(reg.peer_id)
            except RegistryUnavailable:
                return self.core.limited_result(reg, None, False), b""
            return self.core.limited_result(reg, rec, True), b""
        live = Live("", reg.port, time.time(), self.token, self.udp_port, reg.mode)
        try:
            res, gen = await self.store.register(reg.peer_id, reg.uuid, reg.pk, reg.ip, live)
        except RegistryUnavailable:
            return self.core.registered(reg, None, b"", time.time()), b""
        return self.core.registered(reg, res == REG_UUID_MISMATCH, gen, time.time()), gen

    async def _udp_hole_sent(self, effect: HoleSent) -> None:
        try:
            await self._hole_sent(effect.msg, effect.b_addr, True)
        finally:
            self.core.holes_sent -= 1

    # -------------------------------------------------------------- liveness
    async def _timer_loop(self) -> None:
        while True:
            now = time.time()
            delay = self.core.get_timer() - now
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            batch = self.core.handle_timer(now)
            if batch:
                try:
                    await self._flush(batch, now)
                except RegistryError as exc:
                    log.warning("liveness flush failed: %s", exc)

    async def flush_now(self) -> None:
        """Write every pending liveness record at once (drain, tests).

        Raises:
            RegistryError: Redis did not answer.
        """
        await self._flush(self.core.peers.take_dirty(), time.time())

    async def _flush(self, batch: dict[str, LocalPeer], now: float) -> None:
        """Write ``batch``'s liveness records; on failure they wait for the next flush.

        Raises:
            RegistryError: Redis did not answer.
        """
        if not batch:
            return
        items = [(pid, Live("" if p.ip == p.reg_ip else p.ip, p.port, p.seen, self.token,
                            self.udp_port, p.mode), p.gen)
                 for pid, p in batch.items()]
        try:
            n, refused = await self.store.flush_bound(items, now)
        except RegistryError:
            self.core.peers.restore(batch)
            raise
        for pid in self.core.peers.flushed(batch, refused, now):
            self.rebinding.drop_local(pid)  # its registration stream, if any, is checked too
        metrics.LIVE_FLUSHED.inc(n)

    # ----------------------------------------------------------- TCP and WS
    def accepted(self, conn: TcpConn, main: bool) -> None:
        self.conns.add(conn)
        metrics.CONNECTIONS.labels(conn.transport_name).inc()
        self._tasks.spawn(self.serve(conn, main))

    def admit(self, ip: str) -> bool:
        if self._draining or len(self.conns) >= MAX_CONNECTIONS:
            metrics.DROPPED.labels("conn_limit").inc()
            return False
        if not self.conns_per_ip.add(ip):
            metrics.DROPPED.labels("conn_per_ip").inc()
            return False
        return True

    def release(self, conn: Conn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.conns_per_ip.remove(conn.addr[0])
        metrics.CONNECTIONS.labels(conn.transport_name).dec()

    def new_stream(self, main: bool) -> RendezvousStream:
        kx = None
        if main and self.cfg.secure_tcp and self.key.signing is not None:
            kx = ServerKeyExchange(self.key.signing)
        return RendezvousStream(DEFAULT_MAX_FRAME, kx, defer=True)

    def client_ip(self, ws: ServerConnection) -> tuple[str, int]:
        ip, port = addrmangle.normalize(ws.remote_address)
        headers = ws.request.headers if ws.request is not None else None
        # hbbs pairs a proxied address with port 0, so two clients behind one NAT would share a
        # sink key and get each other's answers; the proxy connection's own port keeps them
        # apart (the port is never dialled: WebSocket controllers relay).
        return self.proxies.client_ip(ip, headers), port

    def _ws_admit(self, ws: ServerConnection, request: Any) -> Any:
        if self._draining:
            return ws.respond(503, "draining\n")
        return None

    async def _ws_handler(self, ws: ServerConnection) -> None:
        addr = self.client_ip(ws)
        if not self.admit(addr[0]):
            await ws.close(1013, "busy")
            return
        conn = WsConn(addr, ws)
        self.conns.add(conn)
        metrics.CONNECTIONS.labels("ws").inc()
        try:
            await self.serve(conn, main=True)
        finally:
            self.release(conn)

    async def serve(self, conn: Conn, main: bool) -> None:
        """Read and handle messages until the connection closes or idles out."""
        idle = IDLE_TIMEOUT if main else NAT_TIMEOUT
        last = time.monotonic()
        next_beat = 0.0
        try:
            while True:
                now = time.monotonic()
                if conn.keep_alive:
                    limit = conn.keep_alive * 1.5
                    if now >= next_beat:
                        await conn.send_heartbeat()
                        next_beat = now + conn.keep_alive / 4
                    wait = max(0.05, min(next_beat, last + limit) - now)
                else:
                    limit = idle
                    wait = max(0.05, last + idle - now)
                payload = await conn.next_payload(wait)
                if payload is None:
                    if time.monotonic() - last >= limit:
                        break
                    continue
                last = time.monotonic()
                if conn.registered_id is not None:
                    self._stream_alive(conn)
                if not payload:
                    continue
                keep = await self.handle(conn, payload, main)
                if not keep:
                    break
        except Closed:
            pass
        finally:
            self._forget(conn)
            conn.close()

    def _stream_alive(self, conn: Conn) -> None:
        """Any frame on a registration stream (heartbeat echoes included) is liveness."""
        peer_id = conn.registered_id
        if peer_id is None or self.streams.get(peer_id) is not conn:
            return
        now = time.time()
        peers = self.core.peers
        ip, port = conn.addr
        peer = peers.get(peer_id, now)
        if peer is None:
            peers.verified(peer_id, ip, port, MODE_STREAM, ip, conn.registered_gen, now)
        else:
            peers.heard(peer_id, peer, ip, port, MODE_STREAM, now)
        if peers.urgent:
            self._wake.set()

    def _forget(self, conn: Conn) -> None:
        self.router.release(conn)
        peer_id = conn.registered_id
        if peer_id is not None and self.streams.get(peer_id) is conn:
            del self.streams[peer_id]
            if self.core.peers.stream_peer(peer_id):
                self.core.peers.forget(peer_id)
                self._tasks.spawn(self._drop_live(peer_id))

    async def _drop_live(self, peer_id: str) -> None:
        with contextlib.suppress(RegistryError):
            await self.store.drop_live(peer_id, self.token)

    async def handle(self, conn: Conn, payload: bytes, main: bool) -> bool:
        """Handle one message; False closes the connection."""
        msg = parse(payload)
        if msg is None:
            metrics.DROPPED.labels("bad_message").inc()
            return False
        kind = msg.WhichOneof("union") or ""
        metrics.STREAM_MESSAGES.labels(conn.transport_name, kind or "none").inc()
        if kind == "test_nat_request":
            cu = None
            if main and self.cfg.serial > msg.test_nat_request.serial:
                cu = self.core.config_update()
            await conn.send_message(message(test_nat_response=pb.TestNatResponse(
                port=conn.addr[1], cu=cu)))
            return False
        if kind == "online_request":
            await conn.send_message(await self._online(msg.online_request))
            return False
        if not main:
            return False
        if kind == "punch_hole_request":
            await self._punch_request(conn, msg.punch_hole_request)
            return True
        if kind == "request_relay":
            await self._request_relay(conn, msg)
            return True
        if kind == "punch_hole_sent":
            await self._hole_sent(msg.punch_hole_sent, conn.addr, False)
            return False
        if kind == "local_addr":
            await self._local_addr(msg.local_addr)
            return False
        if kind == "relay_response":
            await self._relay_response(msg)
            return False
        if kind == "register_pk":
            return await self._stream_register_pk(conn, msg.register_pk)
        if kind == "hc":
            conn.keep_alive = float(KEEP_ALIVE)
            return True
        if kind == "http_proxy_request":
            await conn.send_message(message(http_proxy_response=pb.HttpProxyResponse(
                status=501, error="not supported by this server")))
            return False
        if kind == "register_peer":
            # Some client builds also heartbeat with RegisterPeer on their TCP/WS registration
            # stream: answer like UDP (the key is asked for until it is bound to this stream).
            known = conn.registered_id is not None and conn.registered_id == msg.register_peer.id
            await conn.send_message(RESP_KNOWN if known else RESP_REQUEST_PK)
            return True
        # A registration stream outlives messages this server does not know (newer clients).
        return conn.registered_id is not None

    # ----------------------------------------------------------------- flows
    async def _find(self, peer_id: str, sink: str | None) -> tuple[bool, Live | None] | None:
        """(exists, freshest liveness) of B, recording A's sink in the same round trip; None
        when Redis did not answer."""
        try:
            rec, live = await self.store.lookup(
                peer_id, None if sink is None else (sink, self.registry.id))
        except RegistryUnavailable:
            return None
        self.rebinding.drop_local(peer_id, None if rec is None else rec.gen)  # no-op if current
        return self.core.target(peer_id, rec, live, time.time())

    async def _punch_request(self, conn: Conn, req: pb.PunchHoleRequest) -> None:
        first = self.router.hold(conn)
        step = self.core.punch_request(req)
        if isinstance(step, bytes):
            await conn.send_message(step)
            return
        found = await self._find(step.peer_id, conn.addr_key if first else None)
        now = time.time()
        if found is None:
            # Degraded mode: with the control plane away no binding can change, so a peer
            # heard here is still worth a punch.
            local = self.core.local_live(step.peer_id, now)
            if local is None:
                metrics.PUNCH_REQUESTS.labels("server_error").inc()
                await conn.send_message(punch_failure(pb.PunchHoleResponse.OFFLINE,
                                                      "ID server storage unavailable"))
                return
            found = (True, local)
        out = self.core.punch_target(req, conn.addr, conn.websocket, found[0], found[1], now)
        await self._refuse_or_push(conn, out, punch_failure(pb.PunchHoleResponse.OFFLINE))

    async def _request_relay(self, conn: Conn, msg: pb.RendezvousMessage) -> None:
        first = self.router.hold(conn)
        rr = msg.request_relay
        live = None
        if self.core.relay_request_valid(rr):
            found = await self._find(rr.id, conn.addr_key if first else None)
            live = None if found is None else found[1]
        await self._refuse_or_push(conn, self.core.relay_target(msg, conn.addr, live, time.time()))

    async def _refuse_or_push(self, conn: Conn, out: bytes | Push,
                              unreachable: bytes | None = None) -> None:
        """A refusal goes to A; a push goes to B, counted by outcome, and when B cannot be
        reached A gets ``unreachable`` (if any)."""
        if isinstance(out, bytes):
            await conn.send_message(out)
        elif await self.router.push(out.peer_id, out.live, out.data, conn.addr_key):
            metrics.PUNCH_REQUESTS.labels(out.outcome).inc()
        else:
            metrics.PUNCH_REQUESTS.labels("unreachable").inc()
            if unreachable is not None:
                await conn.send_message(unreachable)

    async def signed_pk(self, peer_id: str) -> bytes:
        """Server-signed IdPk of ``peer_id`` (empty when unsigned or unknown)."""
        if self.key.signing is None:
            return b""
        # The key the punch's own look-up read (here, or on the gateway that pushed to B);
        # failing that, the binding is read now. Never an older copy: see bindings.py.
        now = time.time()
        got = self.core.peers.bindings.get(peer_id, now)
        if got is not None:
            pk = got[1]
        else:
            try:
                rec = await self.store.peer(peer_id)
            except RegistryUnavailable:
                return b""
            if rec is None or not rec.pk:
                return b""
            pk = rec.pk
        cache_key = f"{peer_id}\0{pk.hex()}"
        cached = self.signed.get(cache_key, now)
        if cached is not None:
            return cached
        signed = sign_id_pk(self.key.signing, peer_id, pk)
        self.signed.put(cache_key, signed, now)
        return signed

    async def _hole_sent(self, ps: pb.PunchHoleSent, b_addr: tuple[str, int],
                         udp: bool) -> None:
        a = a_key(ps.socket_addr)
        if a is None:
            return
        # A UDP answer only ever reaches A's TCP/WS connection (never a datagram to an
        # address taken from a message body), and only while A is waiting.
        pk = await self.signed_pk(ps.id) if ps.version else b""
        await self.router.deliver(a, self.core.hole_sent_answer(ps, b_addr, pk, udp,
                                                                 time.time()))

    async def _local_addr(self, la: pb.LocalAddr) -> None:
        a = a_key(la.socket_addr)
        if a is None:
            return
        pk = await self.signed_pk(la.id) if la.version else b""
        await self.router.deliver(a, self.core.local_addr_answer(la, pk))

    async def _relay_response(self, msg: pb.RendezvousMessage) -> None:
        rr = msg.relay_response
        a = a_key(rr.socket_addr)
        if a is None:
            return
        pk = b""
        if rr.WhichOneof("union") == "id" and rr.version:
            pk = await self.signed_pk(rr.id)
        await self.router.deliver(a, self.core.relay_answer(msg, a.rsplit(":", 1)[0], pk))

    async def _online(self, req: pb.OnlineRequest) -> bytes:
        asked, total = self.core.online_ids(req)
        now = time.time()
        try:
            lives = await self.store.lives(asked)
        except RegistryUnavailable:
            # Only then are local entries, unconfirmed by any read, the best answer there is.
            lives = [self.core.local_live(i, now) for i in asked]
        return self.core.online_answer(lives, total, now)

    async def _stream_register_pk(self, conn: Conn, rpk: pb.RegisterPk) -> bool:
        if rpk.old_id:
            result = await self.rebinding.change_id(rpk, conn.addr[0])
            await conn.send_message(reg_response(result))
            return False
        ip, port = conn.addr
        step = self.core.register_pk(rpk, ip, port, MODE_STREAM, conn.transport_name,
                                     time.time())
        if step is None:
            return False
        if isinstance(step, int):
            await conn.send_message(reg_response(step))
            return True
        result, gen = await self._register(step)
        if result != Result.OK:
            await conn.send_message(reg_response(result))
            return True
        old = self.streams.get(rpk.id)
        if old is not None and old is not conn:
            old.registered_id = None
        self.streams[rpk.id] = conn
        conn.registered_id = rpk.id
        conn.registered_uuid, conn.registered_gen = bytes(rpk.uuid), gen
        conn.keep_alive = float(KEEP_ALIVE)
        await conn.send_message(reg_response(result, KEEP_ALIVE))
        return True

    # ----------------------------------------------------------------- admin
    def _on_settings_changed(self, data: bytes) -> None:
        self._tasks.spawn(self._reload_settings())

    async def _reload_settings(self) -> None:
        with contextlib.suppress(RegistryError):
            await self.directory.load_settings()

    def _on_admin(self, msg: AdminCommand, sender: str) -> AdminReply:
        return local_command(self.core, msg.cmd, list(msg.args))
