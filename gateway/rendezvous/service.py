"""The ID server service: UDP registration, TCP/WS connection set-up, cross-gateway routing.

Any gateway may receive any datagram or connection. What a peer needs from another process
goes through the registry:

* pushes to B (PunchHole, FetchLocalAddr, RequestRelay) must leave from the socket B's
  heartbeats reach, so they go to the process recorded in B's liveness record (or a sibling on
  the same host bound to the same port) as ``rd.push``;
* B's answers are built where they arrive and handed to the process holding A's connection
  (``rd:sink:<addr>`` in Redis) as ``rd.deliver``.

Heartbeats never wait on Redis: liveness is kept in a bounded local map and flushed in one
pipeline per second, only for peers whose address or owner changed or whose TTL needs extending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from gateway.rendezvous import metrics
from gateway.rendezvous.conns import Acceptor, Closed, Conn, TcpConn, WsConn
from gateway.rendezvous.directory import Directory
from gateway.rendezvous.limits import IpLimiter
from gateway.rendezvous.logic import (
    online_bitmap,
    parse_mask,
    valid_register_id,
)
from gateway.rendezvous.punch import PunchFlows
from gateway.rendezvous.rebinding import Rebinding
from gateway.rendezvous.store import (
    MODE_STREAM,
    MODE_UDP,
    ONLINE_WINDOW,
    REG_UUID_MISMATCH,
    Live,
    Store,
)
from hubbub.errors import RegistryError, RegistryUnavailable
from hubbub.keys import ServerKey, server_key
from hubbub.limits import BoundedMap, SourceCounter, WindowLimit
from hubbub.net import ProxyList, listen_socket
from hubbub.runtime import Context
from hubbub.tasks import TaskSet
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.crypto import ServerKeyExchange
from hubbub.wire.rustdesk.framing import DEFAULT_MAX_FRAME
from hubbub.wire.rustdesk.messages import message, parse, pb
from hubbub.wire.rustdesk.stream import RendezvousStream
from hubbub.ws_server import HeadFirstConnection
from registry import ProcessRecord


__all__ = ["RendezvousService"]

log = logging.getLogger("hubbub.rendezvous")

Result = pb.RegisterPkResponse

MAX_PEERS = 500_000
"""Peers remembered per process (LRU); beyond this the oldest must re-register their key."""
PEER_TTL = 90.0
LIVE_REFRESH = 10.0
"""Rewrite a live record this long after the last write even if nothing changed (TTL 30 s)."""
FLUSH_EVERY = 1.0
FLUSH_COALESCE = 0.005
MAX_LOOKUPS = 256
"""Concurrent Redis look-ups for heartbeats of peers this process does not know yet."""
MAX_REGISTRATIONS = 512
MAX_HOLES_SENT = 256
"""UDP PunchHoleSent being handled at once (each may wait for Redis); more are refused."""
MAX_CONNECTIONS = 20_000
MAX_CONNS_PER_IP = 256
IDLE_TIMEOUT = 30.0
NAT_TIMEOUT = 10.0
KEEP_ALIVE = 60
"""Seconds announced to TCP/WS-registered clients; they give up after 1.5x without traffic."""
MAX_ONLINE_QUERY = 4096
NAT_PROBE_WINDOW = 10.0
IP_CHANGE_WINDOW = 360.0
NAT_PROBES_PER_WINDOW = 40
"""UDP NAT probes answered per source IP per window (a client bursts ~10 at start-up)."""
PUNCH_LOG = 1000
RESP_KNOWN = pb.RendezvousMessage(
    register_peer_response=pb.RegisterPeerResponse(request_pk=False)).SerializeToString()
RESP_REQUEST_PK = pb.RendezvousMessage(
    register_peer_response=pb.RegisterPeerResponse(request_pk=True)).SerializeToString()
UDP_PUNCH_TYPES = ("register_peer", "register_pk", "test_nat_request", "punch_hole_sent")


_DATAGRAM_COUNTERS = {kind: metrics.DATAGRAMS.labels(kind) for kind in UDP_PUNCH_TYPES}


def _reg_response(result: int, keep_alive: int = 0) -> bytes:
    return message(register_pk_response=pb.RegisterPkResponse(
        result=result, keep_alive=keep_alive))  # type: ignore[arg-type]


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


@dataclass(slots=True)
class LocalPeer:
    """A peer heard by this process."""

    ip: str
    port: int
    seen: float
    flushed: float
    mode: int
    reg_ip: str  # the IP of the durable binding; liveness records omit it when equal
    gen: bytes  # the binding generation it was verified under (see bindings.py)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, svc: RendezvousService) -> None:
        self.svc = svc

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.svc.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        metrics.DROPPED.labels("udp_error").inc()


class RendezvousService(Directory, Rebinding, PunchFlows):
    """hbbs on every gateway: ports ``-p`` (UDP+TCP), ``-p - 1`` (TCP), ``-p + 2`` (WS)."""

    name = "rendezvous"

    def __init__(self, ctx: Context, key: ServerKey | None = None) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.registry = ctx.registry
        self.store = Store(ctx.registry)
        self.key = key if key is not None else server_key(
            "-" if ctx.cfg.key is None else ctx.cfg.key, Path(ctx.cfg.data_dir))
        self.network = parse_mask(self.cfg.mask)
        self.proxies = ProxyList(self.cfg.trusted_proxies)
        # Local entries follow the invalidation rule of gateway/rendezvous/bindings.py: each
        # carries the binding generation it was verified under, and is dropped on a
        # BindingChanged, on any read showing another generation, or at its TTL.
        self.peers: BoundedMap[str, LocalPeer] = BoundedMap(MAX_PEERS, PEER_TTL)
        self.dirty: dict[str, LocalPeer] = {}
        self.streams: dict[str, Conn] = {}
        self.sinks: dict[str, Conn] = {}
        self.conns: set[Conn] = set()
        self.conns_per_ip: SourceCounter[str] = SourceCounter(MAX_CONNS_PER_IP)
        self.ip_limiter = IpLimiter()
        # hbbs: at most 3 RegisterPk per ID within 6 s.
        self.id_limiter: WindowLimit[str] = WindowLimit(3, 6.0, max_keys=200_000)
        self.change_limiter: WindowLimit[str] = WindowLimit(3, 600.0, max_keys=50_000)
        self.signed: BoundedMap[str, bytes] = BoundedMap(50_000, 30.0)
        self.punch_log: deque[str] = deque(maxlen=PUNCH_LOG)
        self.punch_seen: BoundedMap[str, bool] = BoundedMap(50_000, 60.0)
        self.sink_hints: BoundedMap[str, str] = BoundedMap(50_000, 35.0)
        self.token = ctx.registry.id.rsplit(":", 1)[-1]
        self.gateways: dict[str, ProcessRecord] = {}
        self._gateways_at = 0.0
        self.lookups: set[str] = set()
        self.relay_servers: tuple[str, ...] = tuple(self.cfg.relay_servers)
        self.always_relay = self.cfg.always_use_relay
        self.auto_relay = ""
        self.relays_down: set[str] = set()
        self._rr = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.udp_port = self.cfg.rendezvous_port
        self._servers: list[asyncio.Server] = []
        self._ws: Server | None = None
        self._tasks = TaskSet(log, "rendezvous")
        self.rechecks: set[str] = set()
        self._bg: list[asyncio.Task[None]] = []
        self._draining = False
        self._up = False
        self._flush_soon = asyncio.Event()
        self._udp_v6 = False
        self._registering = 0
        self._holes_sent = 0
        self.nat_probes: WindowLimit[str] = WindowLimit(NAT_PROBES_PER_WINDOW, NAT_PROBE_WINDOW,
                                                        max_keys=100_000)
        self.ip_changes: BoundedMap[str, dict[str, int]] = BoundedMap(10_000, IP_CHANGE_WINDOW)

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
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=usock)
        main = await loop.create_server(lambda: self._tcp_protocol(True),
                                        sock=listen_socket(host, cfg.rendezvous_port,
                                                           socket.SOCK_STREAM))
        nat = await loop.create_server(lambda: self._tcp_protocol(False),
                                       sock=listen_socket(host, cfg.nat_port, socket.SOCK_STREAM))
        self._servers = [main, nat]
        self._ws = await serve(self._ws_handler, sock=listen_socket(host, cfg.ws_port,
                                                                    socket.SOCK_STREAM),
                               max_size=DEFAULT_MAX_FRAME, ping_interval=None,
                               process_request=self._ws_admit,
                               create_connection=HeadFirstConnection)
        reg = self.registry
        reg.on("rd.push", self._on_push)
        reg.on("rd.deliver", self._on_deliver)
        reg.on("rd.admin", self._on_admin)
        from gateway.rendezvous.admin import ops_handler

        self.ctx.ops.route("/rendezvous/admin", ops_handler(self), admin=True)
        # Subscribe once the inbox is up (a channel added mid-subscribe could be missed); the
        # relay loop also reloads the settings every few seconds as a safety net.
        await reg.wait_ready(2.0)
        await reg.subscribe(self.store.admin_channel, self._on_admin_changed, broadcast=True)
        await reg.subscribe(self.store.bindings_channel, self._on_binding_changed,
                            broadcast=True)
        ports = dict(reg.presence_info().get("ports") or {})
        ports.update(rendezvous=cfg.rendezvous_port, rendezvous_udp=cfg.rendezvous_port,
                     rendezvous_nat=cfg.nat_port, rendezvous_ws=cfg.ws_port)
        reg.set_info(ports=ports)
        with contextlib.suppress(RegistryError):
            await self._load_admin()
        self._bg = [asyncio.create_task(self._flush_loop(), name="rd-flush"),
                    asyncio.create_task(self._directory_loop(), name="rd-directory"),
                    asyncio.create_task(self._sweep_loop(), name="rd-sweep"),
                    asyncio.create_task(self._probe_loop(), name="rd-probe")]
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
            await self._flush()
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
        return {"rd_peers": len(self.peers), "rd_conns": len(self.conns),
                "rd_streams": len(self.streams)}

    # ------------------------------------------------------------------ UDP
    def on_datagram(self, data: bytes, raw_addr: tuple[Any, ...]) -> None:
        msg = parse(data)
        if msg is None:
            metrics.DROPPED.labels("bad_datagram").inc()
            return
        kind = msg.WhichOneof("union")
        if kind not in UDP_PUNCH_TYPES:
            metrics.DROPPED.labels("udp_type").inc()
            return
        _DATAGRAM_COUNTERS[kind].inc()
        ip, port = addrmangle.normalize(raw_addr)
        now = time.time()
        if kind == "register_peer":
            self._register_peer(msg.register_peer, ip, port, raw_addr, now)
        elif kind == "register_pk":
            if self._registering >= MAX_REGISTRATIONS:
                metrics.DROPPED.labels("busy").inc()
                return
            self._registering += 1
            self._tasks.spawn(self._udp_register_pk(msg.register_pk, ip, port, raw_addr))
        elif kind == "test_nat_request":
            # Answered to the datagram's own source; rate-limited per IP so spoofed sources
            # cannot turn the server into a steady reflector.
            if not self.nat_probes.allow(ip, now):
                metrics.DROPPED.labels("nat_probe_rate").inc()
                return
            self._send_udp(message(test_nat_response=pb.TestNatResponse(port=port)), raw_addr)
        else:
            # UDP hole punching: B's observed UDP endpoint goes to A's TCP connection only.
            # Anyone can send these (B repeats each one 3 times), and each may wait for Redis:
            # past the bound they are refused rather than queued.
            if self._holes_sent >= MAX_HOLES_SENT:
                metrics.DROPPED.labels("punch_sent_busy").inc()
                return
            self._holes_sent += 1
            self._tasks.spawn(self._udp_hole_sent(msg.punch_hole_sent, (ip, port)))

    async def _udp_hole_sent(self, ps: pb.PunchHoleSent, b_addr: tuple[str, int]) -> None:
        try:
            await self._hole_sent(ps, b_addr, True)
        finally:
            self._holes_sent -= 1

    def _send_udp(self, data: bytes, raw_addr: tuple[Any, ...]) -> None:
        if self.udp is not None:
            self.udp.sendto(data, raw_addr)

    def _udp_target(self, ip: str, port: int) -> tuple[Any, ...]:
        """A sendto address for our socket's family (IPv4 peers are mapped on ``::``)."""
        if self._udp_v6 and ":" not in ip:
            return (f"::ffff:{ip}", port, 0, 0)
        return (ip, port)

    def _register_peer(self, rp: pb.RegisterPeer, ip: str, port: int,
                       raw_addr: tuple[Any, ...], now: float) -> None:
        peer_id = rp.id
        if not peer_id or len(peer_id) > 64:
            return
        # hbbs follows every answer with the legacy ConfigUpdate when its serial is newer.
        update = self.cfg.serial > rp.serial
        peer = self.peers.get(peer_id, now)
        if peer is None:
            if peer_id in self.lookups:
                return
            if len(self.lookups) >= MAX_LOOKUPS:
                self._send_udp(RESP_REQUEST_PK, raw_addr)
            else:
                self.lookups.add(peer_id)
                self._tasks.spawn(self._lookup_heartbeat(peer_id, ip, port, raw_addr, update))
                return
        elif peer.ip != ip and not _loopback(ip):
            self._note_ip_change(peer_id, peer.ip, ip, now)
            self._send_udp(RESP_REQUEST_PK, raw_addr)
        else:
            self.peers.touch(peer_id, now)
            self._heard(peer_id, peer, ip, port, MODE_UDP, now)
            metrics.HEARTBEATS.inc()
            self._send_udp(RESP_KNOWN, raw_addr)
        if update:
            self._send_udp(message(configure_update=self._config_update()), raw_addr)

    def _note_ip_change(self, peer_id: str, old_ip: str, new_ip: str, now: float) -> None:
        """Remember IDs seen from several IPs recently (``hubbub admin ic``; no enforcement)."""
        seen = self.ip_changes.get(peer_id, now)
        if seen is None:
            seen = {old_ip: 1}
        if new_ip in seen or len(seen) < 16:
            seen[new_ip] = seen.get(new_ip, 0) + 1
        self.ip_changes.put(peer_id, seen, now)

    def _heard(self, peer_id: str, peer: LocalPeer, ip: str, port: int, mode: int,
               now: float) -> None:
        changed = peer.port != port or peer.mode != mode or peer.ip != ip
        peer.ip, peer.port, peer.mode = ip, port, mode
        peer.seen = now
        if changed:
            self.dirty[peer_id] = peer
            self._flush_soon.set()
        elif now - peer.flushed >= LIVE_REFRESH:
            self.dirty[peer_id] = peer

    async def _lookup_heartbeat(self, peer_id: str, ip: str, port: int,
                                raw_addr: tuple[Any, ...], update: bool) -> None:
        """A heartbeat for a peer this process has not heard: trust Redis's key binding."""
        try:
            rec = await self.store.peer(peer_id)
        except RegistryUnavailable:
            rec = None
        finally:
            self.lookups.discard(peer_id)
        if rec is None or not rec.pk or (rec.ip != ip and not _loopback(ip)):
            self._send_udp(RESP_REQUEST_PK, raw_addr)
        else:
            now = time.time()
            peer = LocalPeer(ip, port, now, 0.0, MODE_UDP, rec.ip, rec.gen)
            self.peers.put(peer_id, peer, now)
            self.dirty[peer_id] = peer
            self._flush_soon.set()
            metrics.HEARTBEATS.inc()
            self._send_udp(RESP_KNOWN, raw_addr)
        if update:
            self._send_udp(message(configure_update=self._config_update()), raw_addr)

    def _config_update(self) -> pb.ConfigUpdate:
        """The legacy ConfigUpdate hbbs sends to clients with an older ``serial``."""
        return pb.ConfigUpdate(serial=self.cfg.serial,
                               rendezvous_servers=list(self.cfg.rendezvous_servers))

    async def _udp_register_pk(self, rpk: pb.RegisterPk, ip: str, port: int,
                               raw_addr: tuple[Any, ...]) -> None:
        try:
            got = await self.register_pk(rpk, ip, port, MODE_UDP, "udp")
        finally:
            self._registering -= 1
        if got is not None:
            self._send_udp(_reg_response(got[0]), raw_addr)

    async def register_pk(self, rpk: pb.RegisterPk, ip: str, port: int, mode: int,
                          transport: str) -> tuple[int, bytes] | None:
        """hbbs's RegisterPk rules: (result, binding generation); None means drop silently."""
        if not rpk.uuid or not rpk.pk:
            return None
        peer_id = rpk.id
        now = time.time()
        result: int
        gen = b""
        if not valid_register_id(peer_id):
            result = Result.INVALID_ID_FORMAT
        elif not self.ip_limiter.allow(ip, peer_id, now):
            result = Result.TOO_FREQUENT
        elif self.id_limiter.blocked(peer_id, now):
            # hbbs checks the uuid binding before the per-ID limit, and requests from another
            # machine do not count: a device squatting on an ID cannot lock its owner out.
            result = await self._limited_result(rpk, ip)
        else:
            try:
                live = Live("", port, now, self.token, self.udp_port, mode)
                res, gen = await self.store.register(peer_id, bytes(rpk.uuid), bytes(rpk.pk),
                                                     ip, live)
            except RegistryUnavailable:
                result = Result.SERVER_ERROR
            else:
                if res == REG_UUID_MISMATCH:
                    result = Result.UUID_MISMATCH
                else:
                    self.id_limiter.allow(peer_id, now)
                    result = Result.OK
                    now = time.time()
                    peer = self.peers.get(peer_id, now)
                    if peer is None:
                        peer = LocalPeer(ip, port, now, now, mode, ip, gen)
                        self.peers.put(peer_id, peer, now)
                    else:
                        peer.ip, peer.port, peer.mode, peer.seen = ip, port, mode, now
                        peer.reg_ip, peer.gen = ip, gen
                        peer.flushed = now
                        self.dirty.pop(peer_id, None)
        metrics.REGISTRATIONS.labels(transport, pb.RegisterPkResponse.Result.Name(result)).inc()
        return int(result), gen

    async def _limited_result(self, rpk: pb.RegisterPk, ip: str) -> int:
        """The answer for an ID over its RegisterPk rate: UUID_MISMATCH wins, as in hbbs."""
        try:
            rec = await self.store.peer(rpk.id)
        except RegistryUnavailable:
            return Result.SERVER_ERROR
        if rec is not None and (rec.uuid != bytes(rpk.uuid)
                                or (rec.ip != ip and rec.pk != bytes(rpk.pk))):
            return Result.UUID_MISMATCH
        return Result.TOO_FREQUENT

    # -------------------------------------------------------------- liveness
    async def _flush_loop(self) -> None:
        while True:
            # New or moved peers are published within a few ms (other gateways may be asked
            # for them at once); TTL extensions wait for the next one-second batch.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_EVERY):
                    await self._flush_soon.wait()
            await asyncio.sleep(FLUSH_COALESCE)
            self._flush_soon.clear()
            try:
                await self._flush()
            except RegistryError as exc:
                log.warning("liveness flush failed: %s", exc)

    async def _flush(self) -> None:
        if not self.dirty:
            return
        batch, self.dirty = self.dirty, {}
        now = time.time()
        owner = self.token
        items = [(pid, Live("" if p.ip == p.reg_ip else p.ip, p.port, p.seen, owner,
                          self.udp_port, p.mode), p.gen)
                 for pid, p in batch.items()]
        try:
            n, refused = await self.store.flush_bound(items, now)
        except RegistryError:
            # Put them back (newer updates win) so the next flush retries.
            for pid, p in batch.items():
                self.dirty.setdefault(pid, p)
            raise
        for p in batch.values():
            p.flushed = now
        for pid in refused:
            # Heard under a binding that is gone or changed (a missed BindingChanged); an entry
            # re-registered meanwhile carries its new generation and stays.
            cur = self.peers.get(pid, now)
            if cur is None or cur.gen == batch[pid].gen:
                self.drop_local(pid)
        metrics.LIVE_FLUSHED.inc(n)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.time()
            self.peers.sweep(now)
            self.signed.sweep(now)
            self.sink_hints.sweep(now)
            self.nat_probes.sweep(now)
            self.ip_changes.sweep(now)
            self.punch_seen.sweep(now)
            self.ip_limiter.map.sweep(now)
            self.id_limiter.sweep(now)
            self.change_limiter.sweep(now)
            metrics.ONLINE_PEERS.set(sum(1 for _, p in self.peers.items()
                                         if now - p.seen < ONLINE_WINDOW))

    # ----------------------------------------------------------- TCP and WS
    def _tcp_protocol(self, main: bool) -> asyncio.Protocol:
        return Acceptor(self, main)

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
        peer = self.peers.get(peer_id, now)
        if peer is None:
            peer = LocalPeer(conn.addr[0], conn.addr[1], now, 0.0, MODE_STREAM, conn.addr[0],
                             conn.registered_gen)
            self.peers.put(peer_id, peer, now)
        else:
            self.peers.touch(peer_id, now)
        self._heard(peer_id, peer, conn.addr[0], conn.addr[1], MODE_STREAM, now)

    def _forget(self, conn: Conn) -> None:
        if conn.sink and self.sinks.get(conn.addr_key) is conn:
            del self.sinks[conn.addr_key]
        conn.sink = False
        if conn.registered_id is not None:
            peer_id = conn.registered_id
            if self.streams.get(peer_id) is conn:
                del self.streams[peer_id]
                peer = self.peers.get(peer_id, time.time())
                if peer is not None and peer.mode == MODE_STREAM:
                    self.peers.pop(peer_id)
                    self.dirty.pop(peer_id, None)
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
                cu = self._config_update()
            await conn.send_message(message(test_nat_response=pb.TestNatResponse(
                port=conn.addr[1], cu=cu)))
            return False
        if kind == "online_request":
            await conn.send_message(await self.online_response(msg.online_request))
            return False
        if not main:
            return False
        if kind == "punch_hole_request":
            await self.punch_request(conn, msg.punch_hole_request)
            return True
        if kind == "request_relay":
            await self.request_relay(conn, msg)
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

    # ----------------------------------------------------------- online etc.
    async def online_response(self, req: pb.OnlineRequest) -> bytes:
        ids = list(req.peers)
        asked = [i if valid_register_id(i) else "" for i in ids[:MAX_ONLINE_QUERY]]
        now = time.time()
        try:
            lives = await self.store.lives(asked)
        except RegistryUnavailable:
            # Only then are local entries, unconfirmed by any read, the best answer there is.
            lives = [None if (p := self.peers.get(i, now)) is None
                     else Live(p.ip, p.port, p.seen, self.token, self.udp_port, p.mode)
                     for i in asked]
        flags = [live is not None and live.online(now) for live in lives]
        flags += [False] * (len(ids) - len(asked))
        return message(online_response=pb.OnlineResponse(states=online_bitmap(flags)))

    async def _stream_register_pk(self, conn: Conn, rpk: pb.RegisterPk) -> bool:
        if rpk.old_id:
            result = await self.change_id(rpk, conn.addr[0])
            await conn.send_message(_reg_response(result))
            return False
        ip, port = conn.addr
        got = await self.register_pk(rpk, ip, port, MODE_STREAM, conn.transport_name)
        if got is None:
            return False
        result, gen = got
        if result != Result.OK:
            await conn.send_message(_reg_response(result))
            return True
        old = self.streams.get(rpk.id)
        if old is not None and old is not conn:
            old.registered_id = None
        self.streams[rpk.id] = conn
        conn.registered_id = rpk.id
        conn.registered_uuid, conn.registered_gen = bytes(rpk.uuid), gen
        conn.keep_alive = float(KEEP_ALIVE)
        await conn.send_message(_reg_response(result, KEEP_ALIVE))
        return True

    # ----------------------------------------------------------------- admin
    async def _load_admin(self) -> None:
        settings = await self.store.admin_settings()
        if "relay_servers" in settings:
            self.relay_servers = tuple(s.strip() for s in settings["relay_servers"].split(",")
                                       if s.strip())
        else:
            self.relay_servers = tuple(self.cfg.relay_servers)
        if "always_use_relay" in settings:
            self.always_relay = settings["always_use_relay"] == "Y"
        else:
            self.always_relay = self.cfg.always_use_relay

    async def _on_admin_changed(self, data: bytes) -> None:
        with contextlib.suppress(RegistryError):
            await self._load_admin()

    async def _on_admin(self, payload: Any, sender: str) -> Any:
        from gateway.rendezvous.admin import local_command

        if not isinstance(payload, dict):
            return {"ok": False, "text": "bad request"}
        return local_command(self, str(payload.get("cmd", "")),
                             [str(a) for a in payload.get("args") or []])
