"""ID-server benchmark: server CPU per heartbeat, punch and registration on one pinned core,
punch latency, registrations per second, Redis bytes per peer.

    python -m loadtest.bench_rendezvous            # the full table
    python -m loadtest.bench_rendezvous --runs 3   # three runs: medians per row
    python -m loadtest.bench_rendezvous --quick    # CI-sized

It starts its own Redis and gateways on free loopback ports. Every server process (each
gateway and its redis-server, all threads) is pinned to one core and the load generators to the
other cores, so "server CPU" (gateways + redis-server, from ``/proc``) is what the ID server
costs on the core it owns. It measures, in one run:

* server CPU per ``RegisterPeer`` heartbeat answered (the gateways' own counter), under an
  open-loop load that keeps the server core busy, with 1 and with 2 gateway processes sharing
  the port (SO_REUSEPORT), and the heartbeats answered per second;
* server CPU per punch (PunchHoleRequest from A on TCP, PunchHole pushed to B over UDP, B's
  PunchHoleSent on a fresh TCP connection, PunchHoleResponse to A), Redis included, and the
  punch round trip p50/p99, with A and B on one gateway and on two (one Redis);
* RegisterPk (a new ID with a new key each) answered per second and server CPU per
  registration, devices on many loopback source addresses as the per-IP limit demands;
* Redis bytes per registered peer (``MEMORY USAGE`` of its durable and liveness keys).

Each row carries its target and whether it is met; ``run(quick)`` returns the rows for
``hubbub bench``. Everything is bounded in time and stays on loopback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import selectors
import socket
import statistics
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from hubbub.errors import LoadTestError
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import kind, message, parse, pb
from loadtest.bench import module_main
from loadtest.cluster import (
    LocalCluster,
    cpu_seconds,
    free_port,
    free_port_block,
    pinned,
    split_cores,
)


__all__ = ["main", "p50_p99", "punch_once", "punch_series", "register_many", "run"]

HOST = "127.0.0.1"
OFFERED = 500_000.0
"""Heartbeats/s the generator offers: more than one server core answers (the generator tops
out near this on one core of this machine)."""
WARM_RATE = 20_000.0
"""Heartbeats/s of the warm-up rounds, when the gateways look every peer up in Redis."""


@dataclass(frozen=True)
class Bar:
    """A row's target: ``value <= limit`` (or ``>=`` when ``higher`` is better)."""

    limit: float
    text: str
    higher: bool = False

    def met(self, value: Any) -> bool:
        if not isinstance(value, int | float) or value != value:  # missing or NaN
            return False
        return value >= self.limit if self.higher else value <= self.limit


HB_1 = "server CPU per heartbeat answered, 1 gateway"
HB_2 = "server CPU per heartbeat answered, 2 gateways on one port"
PUNCH_CPU_1 = "server CPU per punch, A and B on one gateway"
PUNCH_RTT_1 = "punch round trip, A and B on one gateway"
PUNCH_CPU_2 = "server CPU per punch, A and B on two gateways"
PUNCH_RTT_2 = "punch round trip, A and B on two gateways"
REG_RATE = "RegisterPk answered per second, 1 gateway"
REG_CPU = "server CPU per RegisterPk, 1 gateway"
BYTES = "Redis bytes per registered peer"
BARS: dict[str, Bar | None] = {
    HB_1: Bar(4.0, "<= 4.0 µs"),
    HB_2: Bar(4.0, "<= 4.0 µs"),
    PUNCH_CPU_1: Bar(0.25, "<= 0.25 ms"),
    PUNCH_RTT_1: Bar(1.0, "p99 <= 1.0 ms"),
    PUNCH_CPU_2: Bar(0.25, "<= 0.25 ms"),
    PUNCH_RTT_2: Bar(2.0, "p99 <= 2.0 ms"),
    REG_RATE: Bar(5200, ">= 5,200/s (2x hbbs)", higher=True),
    REG_CPU: None,  # no target of its own: 5,200/s on one core leaves <= 192 µs each
    BYTES: Bar(300, "<= 300 B"),
}


def _row(case: str, value: float, unit: str, *, p50: float | None = None,
         per_s: float | None = None, core: float | None = None, note: str = "",
         failed: bool = False) -> dict[str, Any]:
    """One table row: the figure next to its target and whether it is met."""
    row: dict[str, Any] = {"case": case, "value": value, "unit": unit, "target": "-",
                           "ok": None, "p50 ms": p50, "per s": per_s, "server core %": core,
                           "note": note}
    judged = judge(row)
    if failed:
        judged["ok"] = False
    return judged


def judge(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its target and ok flag (again) from its value (e.g. a median)."""
    bar = BARS.get(str(row.get("case")))
    if bar is None:
        return row
    return {**row, "target": bar.text, "ok": bar.met(row.get("value"))}


@dataclass(frozen=True)
class Used:
    """Server CPU seconds (gateways + redis-server, and redis-server alone) over a wall time."""

    cpu: float
    redis: float
    wall: float
    core_busy: float = 0.0
    """CPU seconds the server core spent on anything (``/proc/stat``), 0 when unpinned."""

    @property
    def core(self) -> float:
        """Percent of one core the server processes used."""
        return round(100 * self.cpu / max(1e-6, self.wall))

    @property
    def busy(self) -> str:
        """How busy the server core was with anything: these processes, interrupts and any
        other work (the machine's cores may be shared)."""
        return f"{100 * self.core_busy / self.wall:.0f} %" if self.core_busy else "-"


class Meter:
    """Server CPU of a cluster since it was made (or ``restart``ed), from ``/proc``."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.start = self._now()

    def _now(self) -> Used:
        c = self.cluster
        redis_cpu = cpu_seconds(c.redis.pid) if c.redis is not None else 0.0
        return Used(c.cpu_seconds(), redis_cpu, time.monotonic(), _core_busy(c.pin_cpu))

    def restart(self) -> None:
        self.start = self._now()

    def used(self) -> Used:
        now, then = self._now(), self.start
        return Used(now.cpu - then.cpu, now.redis - then.redis, max(1e-6, now.wall - then.wall),
                    now.core_busy - then.core_busy)


def _core_busy(core: int | None) -> float:
    """CPU seconds core ``core`` has been busy with anything since boot (``/proc/stat``)."""
    if core is None:
        return 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                    int, line.split()[1:9])
                return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


# ------------------------------------------------------------------ heartbeats
def _seed_peers(redis_url: str, prefix: str, ids: list[str]) -> None:
    """Durable bindings as RegisterPk would leave them (the measured path is the heartbeat)."""
    r = redis.Redis.from_url(redis_url)
    with r.pipeline(transaction=False) as p:
        for i, peer_id in enumerate(ids):
            p.hset(f"{prefix}rd:peer:{peer_id}",
                   mapping={"u": f"uuid-{i:08d}", "k": os.urandom(32), "ip": HOST})
        p.execute()
    r.close()


def _generator(port: int, ids: list[str], seconds: float, rate: float, conn: Connection) -> None:
    """Open-loop load: every ID from its own fixed socket, paced to ``rate`` datagrams/s.

    Warm-up rounds (every ID once, at ``WARM_RATE``) go first, until ``conn`` says every
    gateway knows its peers. Answers are not read (the kernel drops them once the buffers
    fill): the gateways' own counters say how many heartbeats they answered, and the generator
    stays cheap.
    """
    per = max(1, len(ids) // 256)
    socks = []
    sends: list[tuple[Callable[[bytes], int], bytes]] = []  # (that ID's socket's send, datagram)
    for i in range(0, len(ids), per):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((HOST, port))
        s.setblocking(False)
        socks.append(s)
        sends += [(s.send, message(register_peer=pb.RegisterPeer(id=x))) for x in ids[i:i + per]]
    # Warm-up: each gateway looks its unknown peers up in Redis (a bounded number at once),
    # so the rounds are paced and repeated until they have all been answered.
    burst = 64
    while True:
        for k in range(0, len(sends), burst):
            _send_all(sends[k:k + burst])
            time.sleep(burst / WARM_RATE)
        time.sleep(0.3)
        conn.send("round")
        if conn.recv() == "go":
            break
    # Open loop, the same IDs over and over: one wrap-around list so a burst is one slice.
    n = len(sends)
    cycle = sends * (burst // n + 2)  # at least n + burst long
    start = time.monotonic()
    end = start + seconds
    sent = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = (now - start) * rate - sent
        if due < burst:
            time.sleep(burst / rate)
            continue
        k = sent % n
        _send_all(cycle[k:k + burst])
        sent += burst
    for s in socks:
        s.close()
    conn.send(sent)


def _send_all(sends: list[tuple[Callable[[bytes], int], bytes]]) -> None:
    for send, datagram in sends:
        try:
            send(datagram)
        except (BlockingIOError, ConnectionRefusedError):  # a full buffer: the datagram is lost
            pass


def _answered(ops_ports: list[int]) -> float:
    """Heartbeats the gateways have answered so far (their Prometheus counters)."""
    total = 0.0
    for port in ops_ports:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("hubbub_rendezvous_heartbeats_total "):
                    total += float(line.split()[1])
    return total


def _warm_up(conn: Connection, ops: list[int], n_ids: int, rounds: int = 8) -> float:
    """Let the generator repeat warm-up rounds until one has every heartbeat answered (or
    ``rounds`` are done); the share of the IDs the last round had answered."""
    before = _answered(ops)
    share = 0.0
    for i in range(rounds):
        if not conn.poll(120):
            raise LoadTestError("the heartbeat generator did not warm up")
        conn.recv()
        now = _answered(ops)
        share, before = (now - before) / n_ids, now
        last = share >= 0.999 or i == rounds - 1
        conn.send("go" if last else "again")
        if last:
            break
    return share


def _heartbeats(gateways: int, n_ids: int, seconds: float, core: int | None) -> dict[str, Any]:
    with LocalCluster(gateways=gateways, shards=0, pin_cpu=core) as cluster:
        port = cluster.target.rendezvous_port
        ids = [str(1_000_000_000 + i) for i in range(n_ids)]
        _seed_peers(cluster.base_env["REDIS_URL"], cluster.base_env["HUBBUB_PREFIX"], ids)
        ctx = mp.get_context("fork")  # the generator inherits this process's (load) cores
        mine, theirs = ctx.Pipe()
        ops = cluster.ops_ports("gateway")
        gen = ctx.Process(target=_generator, args=(port, ids, seconds, OFFERED, theirs))
        gen.start()
        try:
            known = _warm_up(mine, ops, n_ids)
            h0, meter = _answered(ops), Meter(cluster)
            if not mine.poll(seconds + 30):
                raise LoadTestError("the heartbeat generator did not finish")
            sent = mine.recv()
            h1, used = _answered(ops), meter.used()
        finally:
            gen.join(5)
            if gen.is_alive():
                gen.kill()
    done = h1 - h0
    return _row(HB_1 if gateways == 1 else HB_2, round(1e6 * used.cpu / max(1.0, done), 2),
                "µs (gateways + redis-server)", per_s=round(done / used.wall), core=used.core,
                note=f"{n_ids:,} peers ({known:.0%} known after warm-up); offered "
                     f"{sent / seconds:,.0f}/s; {done:,.0f} answered; redis-server "
                     f"{1e6 * used.redis / max(1.0, done):.2f} µs of it; server core busy "
                     f"{used.busy} in all",
                failed=done <= 0)


# ----------------------------------------------------------------------- punches
def _answer_punches(port: int, peer_id: str, stop: threading.Event) -> None:
    """Device B: registers over UDP and answers every PunchHole like a real client."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.2", 0))
    u.settimeout(0.2)
    uuid, pk = os.urandom(8).hex().encode(), os.urandom(32)
    u.sendto(message(register_pk=pb.RegisterPk(id=peer_id, uuid=uuid, pk=pk)), (HOST, port))
    while not stop.is_set():
        try:
            data, _ = u.recvfrom(4096)
        except TimeoutError:
            continue
        msg = parse(data)
        if msg is None or kind(msg) != "punch_hole":
            continue
        with socket.create_connection((HOST, port), timeout=3,
                                      source_address=("127.0.0.2", 0)) as t:
            t.sendall(encode_frame(message(punch_hole_sent=pb.PunchHoleSent(
                socket_addr=msg.punch_hole.socket_addr, id=peer_id, version="1.4.9"))))
    u.close()


def punch_once(port: int, peer_id: str, licence: str) -> float | None:
    """One PunchHoleRequest on a fresh TCP connection to ``port``: milliseconds until a
    PunchHoleResponse with an address, None when none came."""
    with socket.create_connection((HOST, port), timeout=3) as a:
        a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dec = FrameDecoder(1 << 16)
        req = encode_frame(message(punch_hole_request=pb.PunchHoleRequest(
            id=peer_id, version="1.4.9", licence_key=licence)))
        t0 = time.perf_counter()
        a.sendall(req)
        while True:
            try:
                data = a.recv(4096)
            except TimeoutError:
                return None
            if not data:
                return None
            for frame in dec.feed(data):
                m = parse(frame)
                if m is not None and kind(m) == "punch_hole_response":
                    if not m.punch_hole_response.socket_addr:
                        return None
                    return (time.perf_counter() - t0) * 1000


def p50_p99(samples: list[float]) -> tuple[float, float]:
    """Median and 99th percentile (NaN for no samples)."""
    if not samples:
        return float("nan"), float("nan")
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def punch_series(ask_port: int, answer_port: int, peer_id: str, licence: str, count: int, *,
                 warmup: int = 0,
                 started: Callable[[], None] | None = None) -> tuple[list[float], int]:
    """``count`` punches through ``ask_port`` to a device ``peer_id`` answering on
    ``answer_port``: the round trips in milliseconds and how many failed. ``warmup`` punches
    go first, unrecorded; ``started`` is called right before the first recorded one."""
    stop = threading.Event()
    b = threading.Thread(target=_answer_punches, args=(answer_port, peer_id, stop), daemon=True)
    samples: list[float] = []
    failures = 0
    try:
        b.start()
        time.sleep(0.5)
        for _ in range(warmup):
            punch_once(ask_port, peer_id, licence)
        if started is not None:
            started()
        for _ in range(count):
            took = punch_once(ask_port, peer_id, licence)
            if took is None:
                failures += 1
            else:
                samples.append(took)
    finally:
        stop.set()
    return samples, failures


def _punches(cluster: LocalCluster, ask_port: int, answer_port: int, peer_id: str, count: int,
             gateways: int) -> list[dict[str, Any]]:
    """Server CPU per punch and the round trips, over one series (A and B on the load cores).
    The servers' idle CPU (timers, presence) is measured first and only reported."""
    meter = Meter(cluster)
    time.sleep(1.0)
    idle = meter.used().core
    samples, failures = punch_series(ask_port, answer_port, peer_id, cluster.target.licence_key,
                                     count, warmup=20, started=meter.restart)
    used = meter.used()
    done = max(1, len(samples))
    p50, p99 = p50_p99(samples)
    note = f"{len(samples)} punches, {failures} failed"
    one = gateways == 1
    return [
        _row(PUNCH_CPU_1 if one else PUNCH_CPU_2,
             round(1000 * used.cpu / done, 3), "ms (gateways + redis-server)",
             per_s=round(len(samples) / used.wall), core=used.core,
             note=f"{note}, one at a time; redis-server {1000 * used.redis / done:.3f} ms of "
                  f"it; servers idle: {idle} % of the core; core busy {used.busy} in all",
             failed=failures > 0 or not samples),
        _row(PUNCH_RTT_1 if one else PUNCH_RTT_2, round(p99, 3),
             "ms p99, request sent -> response received", p50=round(p50, 3), note=note,
             failed=failures > 0 or not samples),
    ]


# ------------------------------------------------------------------ registrations
def register_many(port: int, ids: Sequence[str], *, subnet: int = 3, per_source: int = 20,
                  window: int = 64, timeout: float = 60.0,
                  answer_timeout: float = 2.0) -> tuple[int, float]:
    """RegisterPk for every ID (a fresh uuid and key each) over UDP, ``window`` in flight, the
    IDs ``per_source`` at a time from source addresses ``127.<subnet>.x.y`` (the ID server
    limits registrations per IP): (OK answers, seconds taken). A registration unanswered
    within ``answer_timeout`` counts as failed; the whole run stops after ``timeout``."""
    sel = selectors.DefaultSelector()
    sources = deque(range(0, len(ids), per_source))
    ok = 0
    active = 0

    def send(u: socket.socket, peer_id: str) -> None:
        u.sendto(message(register_pk=pb.RegisterPk(id=peer_id, uuid=os.urandom(8).hex().encode(),
                                                   pk=os.urandom(32))), (HOST, port))

    def next_id(u: socket.socket, todo: list[str]) -> bool:
        """Send ``u``'s next registration; False (and ``u`` closed) when it has none left."""
        if not todo:
            u.close()
            return False
        send(u, todo.pop())
        sel.register(u, selectors.EVENT_READ, (todo, time.monotonic() + answer_timeout))
        return True

    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while (sources or active) and time.monotonic() < deadline:
            while sources and active < window:
                first = sources.popleft()
                n = first // per_source
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((f"127.{subnet}.{n // 250}.{n % 250 + 1}", 0))
                u.setblocking(False)
                active += next_id(u, list(ids[first:first + per_source]))
            now = time.monotonic()
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    continue
                m = parse(data)
                if m is None or kind(m) != "register_pk_response":
                    continue
                if m.register_pk_response.result == pb.RegisterPkResponse.OK:
                    ok += 1
                sel.unregister(sock)
                active -= not next_id(sock, key.data[0])
            for key in list(sel.get_map().values()):
                if key.data[1] < now:  # no answer: counts as failed, the source goes on
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    sel.unregister(sock)
                    active -= not next_id(sock, key.data[0])
        return ok, time.perf_counter() - start
    finally:
        for key in list(sel.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        sel.close()


def _registrations(cluster: LocalCluster, n: int, sample: int) -> list[dict[str, Any]]:
    """RegisterPk answered per second and server CPU each, then Redis bytes per peer."""
    prefix = cluster.base_env["HUBBUB_PREFIX"]
    r = redis.Redis.from_url(cluster.base_env["REDIS_URL"])
    try:
        used0 = int(r.info("memory")["used_memory"])
        ids = [str(1_500_000_000 + i) for i in range(n)]
        meter = Meter(cluster)
        ok, took = register_many(cluster.target.rendezvous_port, ids, timeout=120.0)
        used = meter.used()
        used1 = int(r.info("memory")["used_memory"])
        some = ids[:sample]
        keys = [f"{prefix}rd:peer:{i}" for i in some] + [f"{prefix}rd:live:{i}" for i in some]
        sizes = [int(r.memory_usage(k) or 0) for k in keys]
        registered = sum(1 for i in some if r.exists(f"{prefix}rd:peer:{i}"))
    finally:
        r.close()
    per_peer = sum(sizes) / max(1, registered)
    note = f"{ok:,} of {n:,} answered OK"
    return [
        _row(REG_RATE, round(ok / max(1e-6, took)), "registrations/s answered OK",
             core=used.core, failed=ok < n,
             note=f"{note}; new IDs and keys, 64 in flight; server core busy "
                  f"{used.busy} in all"),
        _row(REG_CPU, round(1e6 * used.cpu / max(1, ok), 1), "µs (gateway + redis-server)",
             note=f"{note}; redis-server {1e6 * used.redis / max(1, ok):.1f} µs of it",
             failed=ok <= 0),
        _row(BYTES, round(per_peer), "B (MEMORY USAGE, durable + liveness keys)",
             note=f"{registered} peers sampled; used_memory delta "
                  f"{round((used1 - used0) / max(1, ok))} B/peer",
             failed=registered <= 0),
    ]


def _id_server(punches: int, registrations: int, sample: int,
               core: int | None) -> list[dict[str, Any]]:
    """Registrations on one gateway, punches on it, then punches across a second one."""
    with LocalCluster(gateways=1, shards=0, pin_cpu=core) as cluster:
        p1 = cluster.target.rendezvous_port
        rows = _registrations(cluster, registrations, sample)
        one = _punches(cluster, p1, p1, "777000111", punches, 1)
        p2 = free_port_block(4) + 1  # its NAT-test port is p2 - 1, its WebSocket port p2 + 2
        cluster.add("gateway", RENDEZVOUS_PORT=str(p2), SPACES_PORT=str(free_port()))
        two = _punches(cluster, p2, p1, "777000222", punches, 2)
    order = {r["case"]: r for r in rows + one + two}
    return [order[c] for c in (PUNCH_CPU_1, PUNCH_CPU_2, PUNCH_RTT_1, PUNCH_RTT_2, REG_RATE,
                               REG_CPU, BYTES)]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure everything once (servers on one core, load on the others); one dict per row."""
    seconds = 3.0 if quick else 8.0
    n_ids = 4000 if quick else 20_000
    core, load = split_cores()
    with pinned(load):
        rows = [_heartbeats(1, n_ids, seconds, core), _heartbeats(2, n_ids, seconds, core)]
        rows += _id_server(punches=400 if quick else 2000,
                           registrations=8000 if quick else 30_000,
                           sample=500 if quick else 2000, core=core)
    where = (f"servers on core {core}, load on {','.join(map(str, sorted(load)))}"
             if core is not None else "NOT pinned (fewer than 2 cores)")
    for r in rows[:1] if core is not None else rows:
        r["note"] = f"{r['note']}; {where}"
    return rows


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, "python -m loadtest.bench_rendezvous",
                       "ID-server CPU per heartbeat, punch and registration on one pinned core; "
                       "punch latency; registrations/s; Redis bytes per peer", run,
                       "shorter windows, fewer peers, punches and registrations", judge)


if __name__ == "__main__":
    raise SystemExit(main())
