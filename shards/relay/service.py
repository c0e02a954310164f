"""The relay service of a shard: listeners, first message, uuid ownership, pairing, sweeps.

Every shard of a host binds ``RELAY_PORT`` (TCP) and ``RELAY_PORT + 2`` (WebSocket) with
``SO_REUSEPORT``, so the kernel spreads connections over the shards. The two halves of a relay
meet in the shard that owns their uuid: the first half's shard claims the uuid in Redis
(``SET NX GET``, batched in pipelines, never per packet; see ``claims``); a half accepted
elsewhere is handed to the owner with its fd and already-read bytes (``handoff``). If Redis cannot
be reached, the owner is chosen by rendezvous hashing over this host's live shards instead.

Once paired, TCP <-> TCP pairs move raw bytes through asyncio transports (``raw``; with
``RELAY_PUMP=splice`` they are spliced through a pipe instead, ``splice``) and pairs with a
WebSocket side are bridged message by message, each message streamed through in the pieces it
arrives in (``bridge``). A sweep once a second expires waiting halves, ends idle pairs, applies
hbbr's downgrade rule and refreshes statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from hubbub.config import Config
from hubbub.contracts.relay import ListsChanged, PairUsage, UsageReply, UsageRequest
from hubbub.errors import ConfigError, RegistryUnavailable, RemoteProtocolError
from hubbub.ipaddr import normalise_ip
from hubbub.keys import relay_licence
from hubbub.net import ProxyList, listen_socket
from hubbub.ops import Request, Response
from hubbub.runtime import Context
from hubbub.tasks import TaskSet
from hubbub.wire.relay.bandwidth import burst_for, mbps_to_bytes, relay_bucket
from hubbub.wire.relay.first_message import (
    Hello,
    Refused,
    TcpFirstMessage,
    WsFirstMessage,
    check_hello,
)
from hubbub.wire.relay.waiting import TableFull, WaitingTable
from hubbub.wire.websocket import HandshakeError
from shards.relay import budget, metrics, splice, store
from shards.relay.buffered import BufferedPair
from shards.relay.claims import Claims
from shards.relay.handoff import HandoffServer, Transfer, hand_over, handoff_address
from shards.relay.lists import IpLists
from shards.relay.pair import Pair
from shards.relay.splice import SplicePair


__all__ = ["Half", "RelayService"]

log = logging.getLogger("hubbub.relay")

MAX_HANDSHAKES = 10_000
"""Connections still sending their first message, per shard; more are closed at once."""
READ_CHUNK = 16 * 1024
HANDOFF_ATTEMPTS = 4
SWEEP_EVERY = 1.0
LIST_RELOAD_EVERY = 10.0


@dataclass(eq=False)
class Half:
    """One accepted connection that sent a valid RequestRelay and waits for its partner."""

    sock: socket.socket
    transport: str
    uuid: str
    peer_ip: str
    peer_port: int
    leftover: bytes
    arrived: float = field(default=0.0)

    @property
    def addr(self) -> str:
        return f"{self.peer_ip}:{self.peer_port}"


def _raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one (a relay pair costs up to 6 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class RelayService:
    """hbbr inside a shard (see the module docstring)."""

    name = "relay"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg: Config = ctx.cfg
        self.proxies = ProxyList(self.cfg.trusted_proxies)
        self.registry = ctx.registry
        self.key = ""
        self.table: WaitingTable[Half] = WaitingTable(self.cfg.relay_timeout)
        self.pairs: set[Pair] = set()
        self.lists = IpLists()
        self.total = relay_bucket(0.0, 0.0)
        self.memory = budget.ShardMemory()
        self._splice = self.cfg.relay_pump == "splice" and splice.AVAILABLE
        self.host_shards: list[str] = [self.registry.id]
        self.claims = Claims(self.registry, self.cfg.relay_timeout + 2.0)
        self.handoff = HandoffServer(handoff_address(self.cfg.prefix, self.registry.id),
                                     self._take_handed)
        self._listeners: list[tuple[socket.socket, str]] = []
        self._tasks = TaskSet(log, "relay")
        self._handshakes = 0
        self._accepting = False
        self._accept_paused = False
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bps = 0.0
        self._moved_mark = 0
        self._moved_closed = 0
        self._mark_time = 0.0
        self._last_list_load = 0.0
        self.ports: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        if not 0 < cfg.relay_port <= 65533:
            raise ConfigError(f"invalid value for RELAY_PORT: {cfg.relay_port} (the WebSocket "
                              "relay needs RELAY_PORT + 2 too)")
        self._loop = asyncio.get_running_loop()
        self.key = relay_licence(cfg.key or "", cfg.data_path)
        nofile = _raise_nofile()
        # Every waiting half holds a descriptor; keep room for pairs, pipes and handshakes.
        self.table.max_waiting = max(64, min(self.table.max_waiting, nofile // 4))
        # No single address may hold more than a quarter of the table.
        self.table.max_per_source = max(64, self.table.max_waiting // 4)
        self.total = relay_bucket(self._total_share(), self._loop.time())
        tcp = listen_socket(cfg.bind_host, cfg.relay_port)
        try:
            ws = listen_socket(cfg.bind_host, cfg.relay_ws_port)
        except OSError:
            tcp.close()
            raise
        self._listeners = [(tcp, "tcp"), (ws, "ws")]
        self.ports = {"relay": tcp.getsockname()[1], "relay_ws": ws.getsockname()[1]}
        self.handoff.start()
        self.claims.start()
        self.lists = store.read_files(cfg.data_path)
        self.registry.handle(UsageRequest, self._usage)
        self.ctx.ops.route("/relay/usage", self._ops_usage, admin=True)
        self.registry.handle(ListsChanged, self._on_notice)
        self.registry.add_tick(self._tick)
        self._tasks.spawn(self._initial_lists())
        ports = dict(self.registry.presence_info().get("ports") or {})
        ports.update(self.ports)
        self.registry.set_info(ports=ports, relay_handoff=self.handoff.address[1:])
        self._mark_time = self._loop.time()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="relay-sweep")
        for sock, transport in self._listeners:
            self._loop.add_reader(sock.fileno(), self._on_accept, sock, transport)
        self._accepting = True
        log.info("relay listening on %s tcp %d ws %d (key %s, %s)", cfg.bind_host,
                 self.ports["relay"], self.ports["relay_ws"],
                 "required" if self.key else "not checked",
                 "splice pump" if self._splice else "buffered pump")

    def _pause_accepting(self, seconds: float) -> None:
        assert self._loop is not None
        self._accept_paused = True
        for sock, _ in self._listeners:
            self._loop.remove_reader(sock.fileno())
        self._loop.call_later(seconds, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        if self._accepting and self._loop is not None:
            for sock, transport in self._listeners:
                self._loop.add_reader(sock.fileno(), self._on_accept, sock, transport)

    def _stop_accepting(self) -> None:
        was_accepting, self._accepting = self._accepting, False
        for sock, _ in self._listeners:
            if was_accepting and not self._accept_paused and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners = []
        with contextlib.suppress(RuntimeError):
            self.handoff.close()

    async def drain(self) -> None:
        self._stop_accepting()
        for half in self.table:
            self._refuse(half.sock, "draining")
        self.table = WaitingTable(self.cfg.relay_timeout)
        while self.pairs:
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        self._stop_accepting()
        await self.claims.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for half in self.table:
            half.sock.close()
        for pair in list(self.pairs):
            pair.close("shutdown")
        self._tasks.cancel()
        metrics.WAITING.set(0)

    def healthy(self) -> bool:
        return self._accepting

    def load(self) -> dict[str, Any]:
        return {"relay_pairs": len(self.pairs), "relay_bps": round(self._bps, 1)}

    # ------------------------------------------------------------- helpers
    def _total_share(self) -> float:
        return mbps_to_bytes(self.cfg.total_bandwidth) / max(1, len(self.host_shards))

    def _pair_rate(self, ips: tuple[str, str]) -> tuple[float, bool]:
        if any(self.lists.limited(ip) for ip in ips):
            return mbps_to_bytes(self.cfg.limit_speed), True
        return mbps_to_bytes(self.cfg.single_bandwidth), False

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        metrics.REFUSED.labels(reason).inc()
        if log.isEnabledFor(logging.DEBUG):
            with contextlib.suppress(OSError):
                log.debug("relay connection from %s refused: %s", sock.getpeername(), reason)
        with contextlib.suppress(OSError):
            sock.close()

    # --------------------------------------------------------------- accept
    def _on_accept(self, listener: socket.socket, transport: str) -> None:
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors (or similar): the listener stays readable, so back off
                # instead of spinning, and let the backlog wait.
                metrics.REFUSED.labels("accept_error").inc()
                if not self._accept_paused:
                    log.warning("relay accept failed: %s; pausing accepts for 1s", exc)
                    self._pause_accepting(1.0)
                return
            metrics.ACCEPTED.labels(transport).inc()
            if self._handshakes >= MAX_HANDSHAKES:
                self._refuse(sock, "busy")
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshakes += 1
            self._tasks.spawn(self._handle(sock, addr, transport))

    async def _handle(self, sock: socket.socket, addr: Any, transport: str) -> None:
        try:
            try:
                ip = normalise_ip(str(addr[0]))
            except ValueError:
                ip = str(addr[0])
            port = int(addr[1])
            if self.lists.blocked(ip):
                self._refuse(sock, "blocked")
                return
            try:
                async with asyncio.timeout(self.cfg.relay_timeout):
                    hello, ip = await self._first_message(sock, transport, ip)
                check_hello(hello, self.key)
            except TimeoutError:
                self._refuse(sock, "timeout")
                return
            except Refused as exc:
                self._refuse(sock, exc.reason)
                return
            except (OSError, RemoteProtocolError):
                self._refuse(sock, "error")
                return
            if self.lists.blocked(ip):
                self._refuse(sock, "blocked")
                return
            half = Half(sock, transport, hello.uuid, ip, port, hello.leftover)
        finally:
            self._handshakes -= 1
        try:
            await self._route(half)
        except Exception:
            log.exception("relay routing failed")
            self._refuse(sock, "error")

    async def _first_message(self, sock: socket.socket, transport: str,
                             ip: str) -> tuple[Hello, str]:
        loop = asyncio.get_running_loop()
        if transport == "tcp":
            reader = TcpFirstMessage()
            while True:
                data = await loop.sock_recv(sock, READ_CHUNK)
                if not data:
                    raise Refused("closed", "closed before RequestRelay")
                hello = reader.feed(data)
                if hello is not None:
                    return hello, ip
        ws = WsFirstMessage()
        while True:
            data = await loop.sock_recv(sock, READ_CHUNK)
            if not data:
                raise Refused("closed", "closed before RequestRelay")
            try:
                out, hello = ws.feed(data)
            except HandshakeError as exc:
                with contextlib.suppress(OSError):
                    sock.send(exc.response)
                raise Refused("bad_upgrade", str(exc)) from None
            if out:
                await loop.sock_sendall(sock, out)
            if ws.done is not None and out:
                ip = self.proxies.client_ip(ip, ws.done.headers)
            if hello is not None:
                return hello, ip

    # -------------------------------------------------------------- routing
    def _hash_owner(self, uuid: str) -> str:
        def score(pid: str) -> bytes:
            return hashlib.blake2b(f"{uuid}\0{pid}".encode(), digest_size=8).digest()

        return max(self.host_shards or [self.registry.id], key=score)

    async def _route(self, half: Half) -> None:
        owner = await self.claims.claim(half.uuid) or self._hash_owner(half.uuid)
        if owner != self.registry.id and self._accepting:
            transfer = Transfer(half.uuid, half.transport, half.peer_ip, half.peer_port,
                                half.leftover, 0.0)
            address = handoff_address(self.cfg.prefix, owner)
            for attempt in range(HANDOFF_ATTEMPTS):
                outcome = await hand_over(address, transfer, half.sock.fileno())
                if outcome == "taken":
                    metrics.HANDOFFS.labels("sent").inc()
                    half.sock.close()
                    return
                if outcome == "gone":
                    break
                await asyncio.sleep(0.05 * (attempt + 1))
            # The owner is gone (its waiting half went with it): this shard takes the uuid.
            metrics.HANDOFFS.labels("failed").inc()
            await self.claims.claim(half.uuid, force=True)
        self._arrive(half)

    def _take_handed(self, sock: socket.socket, t: Transfer) -> bool:
        if not self._accepting or t.transport not in ("tcp", "ws"):
            return False
        metrics.HANDOFFS.labels("received").inc()
        half = Half(sock, t.transport, t.uuid, t.peer_ip, t.peer_port, t.leftover)
        self._arrive(half)
        return True

    def _arrive(self, half: Half) -> None:
        assert self._loop is not None
        now = self._loop.time()
        half.arrived = now
        try:
            partner = self.table.arrive(half.uuid, half, now, half.peer_ip)
        except TableFull:
            self._refuse(half.sock, "busy")
            return
        metrics.WAITING.set(len(self.table))
        if partner is None:
            return
        self.claims.forget(half.uuid)
        self._pair(partner, half)

    def _pair(self, a: Half, b: Half) -> None:
        assert self._loop is not None
        now = self._loop.time()
        ips = (a.peer_ip, b.peer_ip)
        addrs = (a.addr, b.addr)
        rate, limited = self._pair_rate(ips)
        pair: Pair
        raw = a.transport == b.transport == "tcp"
        if raw and self._splice:
            sp = SplicePair(a.uuid, a.sock, b.sock, (a.leftover, b.leftover), addrs, ips, now,
                            rate, self.total, self._pair_closed)
            sp.start()
            pair = sp
        else:
            bp = BufferedPair(a.uuid, (a.sock, b.sock), (a.transport, b.transport),
                            (a.leftover, b.leftover), addrs, ips, now, rate, self.total,
                            self._pair_closed, framed=not raw, memory=self.memory)
            self._tasks.spawn(bp.start())
            pair = bp
        pair.limited = limited
        self.pairs.add(pair)
        metrics.PAIRED.labels(pair.mode).inc()
        metrics.PAIRS.set(len(self.pairs))

    def _pair_closed(self, pair: Pair, reason: str) -> None:
        log.debug("relay pair %s <-> %s ended (%s) after %d bytes", pair.addrs[0], pair.addrs[1],
                  reason, pair.moved)
        self.pairs.discard(pair)
        self._moved_closed += pair.moved
        metrics.CLOSED.labels(reason).inc()
        metrics.PAIRS.set(len(self.pairs))

    # -------------------------------------------------------------- sweeps
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                self.sweep()
            except Exception:
                log.exception("relay sweep failed")

    def sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for half in self.table.expire(now):
            self._refuse(half.sock, "unpaired")
        metrics.WAITING.set(len(self.table))
        cfg = self.cfg
        moved = self._moved_closed
        for pair in list(self.pairs):
            moved += pair.moved
            if now - pair.last_active > cfg.relay_timeout:
                pair.close("idle")
                continue
            pair.stats.tick(pair.moved, now)
            pair.flush_metrics()
            pair.sweep(now)
            if not pair.limited and pair.stats.should_downgrade(
                    now, cfg.single_bandwidth, cfg.downgrade_threshold,
                    cfg.downgrade_start_check):
                pair.set_rate(mbps_to_bytes(cfg.limit_speed), True, now)
                metrics.THROTTLED.labels("downgrade").inc()
        metrics.HELD.set(self.memory.used)
        span = now - self._mark_time
        if span > 0:
            self._bps = (moved - self._moved_mark) * 8 / span
        self._moved_mark = moved
        self._mark_time = now

    async def _tick(self) -> None:
        """Registry heartbeat hook: this host's live shards (bandwidth share, hash fallback)."""
        try:
            recs = await self.registry.processes("shard")
        except RegistryUnavailable:
            return
        ids = sorted(r.id for r in recs if r.host == self.registry.host and r.state == "up")
        if self.registry.id not in ids and self._accepting:
            ids = sorted([*ids, self.registry.id])
        if ids != self.host_shards:
            self.host_shards = ids
            assert self._loop is not None
            share = self._total_share()
            self.total.set_rate(share, burst_for(share), self._loop.time())
        if time.monotonic() - self._last_list_load > LIST_RELOAD_EVERY:
            await self._reload_lists()

    # --------------------------------------------------------------- lists
    async def _initial_lists(self) -> None:
        with contextlib.suppress(RegistryUnavailable):
            await store.merge_files(self.registry, self.lists)
        await self._reload_lists()

    async def _on_notice(self, _msg: ListsChanged, _sender: str) -> None:
        await self._reload_lists()

    async def _reload_lists(self) -> None:
        try:
            lists = await store.fetch(self.registry)
        except RegistryUnavailable:
            return
        self._last_list_load = time.monotonic()
        self.apply_lists(lists)
        await asyncio.to_thread(store.write_files, self.cfg.data_path, lists)

    def apply_lists(self, lists: IpLists) -> None:
        """Use new lists for new connections and for every running pair."""
        self.lists = lists
        assert self._loop is not None
        now = self._loop.time()
        for half in list(self.table):
            if lists.blocked(half.peer_ip) and self.table.discard(half.uuid, half):
                self._refuse(half.sock, "blocked")
        for pair in list(self.pairs):
            if any(lists.blocked(ip) for ip in pair.ips):
                pair.close("blocked")
                continue
            rate, limited = self._pair_rate(pair.ips)
            if limited and not pair.limited:
                pair.set_rate(rate, True, now)
            elif not limited and pair.limited and not pair.stats.should_downgrade(
                    now, self.cfg.single_bandwidth, self.cfg.downgrade_threshold,
                    self.cfg.downgrade_start_check):
                pair.set_rate(rate, False, now)

    # ---------------------------------------------------------------- admin
    def usage(self) -> list[PairUsage]:
        assert self._loop is not None
        now = self._loop.time()
        rows = []
        for pair in self.pairs:
            elapsed = now - pair.stats.started
            rows.append(PairUsage(
                a=pair.addrs[0], b=pair.addrs[1], elapsed=round(elapsed, 1),
                total_mb=round(pair.moved / 1024 / 1024, 3),
                peak_kbps=round(pair.stats.peak_bps / 1000, 1),
                avg_kbps=round(pair.stats.average_bps(now) / 1000, 1),
                current_kbps=round(pair.stats.current_bps / 1000, 1),
                mode=pair.mode, limited=pair.limited,
            ))
        return rows

    def _usage(self, _msg: UsageRequest, _sender: str) -> UsageReply:
        return UsageReply(self.registry.id, tuple(self.usage()), len(self.table))

    async def _ops_usage(self, _req: Request) -> Response:
        body = orjson.dumps(dataclasses.asdict(self._usage(UsageRequest(), "")),
                            option=orjson.OPT_INDENT_2)
        return Response(200, body + b"\n", "application/json")
