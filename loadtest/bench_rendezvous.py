"""ID-server benchmark: heartbeat throughput, cross-gateway punch latency, Redis bytes per peer.

Run ``python -m loadtest.bench_rendezvous [--quick]``. It starts its own Redis and gateways on
free loopback ports and measures, in one run:

* sustained ``RegisterPeer`` heartbeats answered per second with 1 and with 2 gateway processes
  sharing the port (SO_REUSEPORT), driven by load-generator processes with many UDP sockets,
  plus heartbeats per gateway CPU-second (the machine's cores are shared with the generators);
* punch round trip (PunchHoleRequest sent -> PunchHoleResponse received) with A on one gateway
  and B on another, B answering like a real client on a fresh TCP connection;
* Redis bytes per registered peer (``MEMORY USAGE`` of its durable and liveness keys).

It prints a Markdown table; ``run(quick)`` returns the rows for ``hubbub bench``. Everything is
bounded in time and stays on loopback.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import threading
import time
import urllib.request
from typing import Any

import redis

from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import kind, message, parse, pb
from loadtest.bench import module_main
from loadtest.cluster import LocalCluster, cpu_seconds, free_port, free_port_block


__all__ = ["main", "run"]

HOST = "127.0.0.1"
OFFERED = 250_000.0
"""Heartbeats/s the generator offers: more than two gateways on this machine can answer."""


def _seed_peers(redis_url: str, prefix: str, ids: list[str]) -> None:
    """Durable bindings as RegisterPk would leave them (the measured path is the heartbeat)."""
    r = redis.Redis.from_url(redis_url)
    with r.pipeline(transaction=False) as p:
        for i, peer_id in enumerate(ids):
            p.hset(f"{prefix}rd:peer:{peer_id}",
                   mapping={"u": f"uuid-{i:08d}", "k": os.urandom(32), "ip": HOST})
        p.execute()
    r.close()


def _generator(port: int, ids: list[str], seconds: float, rate: float, out: Any) -> None:
    """Open-loop load: every ID from its own fixed socket, paced to ``rate`` datagrams/s.

    Answers are not read (the kernel drops them once the buffers fill): the gateways' own
    counters say how many heartbeats they handled and answered, and the generator stays cheap
    enough to leave the cores to the gateways.
    """
    per = max(1, len(ids) // 256)
    socks = []
    payloads: list[bytes] = []
    owners: list[socket.socket] = []
    for i in range(0, len(ids), per):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((HOST, port))
        s.setblocking(False)
        socks.append(s)
        for x in ids[i:i + per]:
            payloads.append(message(register_peer=pb.RegisterPeer(id=x)))
            owners.append(s)
    # Warm-up: every ID a few times, so each gateway has looked its peers up in Redis.
    for _ in range(3):
        for sock, d in zip(owners, payloads, strict=True):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.send(d)
        time.sleep(0.4)
    out.put("warm")
    n = len(payloads)
    burst = 64
    start = time.monotonic()
    end = start + seconds
    sent = 0
    idx = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = (now - start) * rate - sent
        if due < burst:
            time.sleep(burst / rate)
            continue
        for _ in range(burst):
            k = idx % n
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                owners[k].send(payloads[k])
            idx += 1
        sent += burst
    for s in socks:
        s.close()
    out.put(sent)


def _handled(ops_ports: list[int]) -> float:
    """Heartbeats the gateways have answered so far (their Prometheus counters)."""
    total = 0.0
    for port in ops_ports:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("hubbub_rendezvous_heartbeats_total "):
                    total += float(line.split()[1])
    return total


def _heartbeats(gateways: int, n_ids: int, seconds: float) -> dict[str, Any]:
    with LocalCluster(gateways=gateways, shards=0) as cluster:
        port = cluster.target.rendezvous_port
        ids = [str(1_000_000_000 + i) for i in range(n_ids)]
        _seed_peers(cluster.base_env["REDIS_URL"], cluster.base_env["HUBBUB_PREFIX"], ids)
        ctx = mp.get_context("fork")
        q: Any = ctx.Queue()
        pids = [p.popen.pid for p in cluster.procs if p.role == "gateway"]
        ops = cluster.ops_ports("gateway")
        gen = ctx.Process(target=_generator, args=(port, ids, seconds, OFFERED, q))
        gen.start()
        q.get(timeout=60)  # warmed up
        h0, cpu0, t0 = _handled(ops), sum(cpu_seconds(pid) for pid in pids), time.monotonic()
        sent = q.get(timeout=seconds + 30)
        h1, cpu1, t1 = _handled(ops), sum(cpu_seconds(pid) for pid in pids), time.monotonic()
        gen.join(5)
    wall = max(1e-6, t1 - t0)
    done = h1 - h0
    cpu = max(1e-6, cpu1 - cpu0)
    rate = done / wall
    busy = cpu / wall / gateways
    return {"case": f"heartbeats, {gateways} gateway{'s' if gateways > 1 else ''}",
            "value": round(rate), "unit": "heartbeats/s answered",
            "per gateway CPU-s": round(done / cpu),
            "note": f"offered {sent / seconds:,.0f}/s; each gateway {busy * 100:.0f} % of a "
                    f"core; {os.cpu_count()} cores shared with the load generator",
            "bar": ">= 20000 per gateway" if gateways == 1 else "",
            "ok": rate >= 20_000 if gateways == 1 else None}


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


def punch_series(ask_port: int, answer_port: int, peer_id: str, licence: str,
                 count: int) -> tuple[list[float], int]:
    """``count`` punches through ``ask_port`` to a device ``peer_id`` answering on
    ``answer_port``: the round trips in milliseconds and how many failed."""
    stop = threading.Event()
    b = threading.Thread(target=_answer_punches, args=(answer_port, peer_id, stop), daemon=True)
    samples: list[float] = []
    failures = 0
    try:
        b.start()
        time.sleep(0.5)
        for _ in range(count):
            took = punch_once(ask_port, peer_id, licence)
            if took is None:
                failures += 1
            else:
                samples.append(took)
    finally:
        stop.set()
    return samples, failures


def _punch_rtt(count: int) -> dict[str, Any]:
    with LocalCluster(gateways=1, shards=0) as cluster:
        p1 = cluster.target.rendezvous_port
        p2 = free_port_block(4) + 1  # its NAT-test port is p2 - 1, its WebSocket port p2 + 2
        cluster.add("gateway", RENDEZVOUS_PORT=str(p2), SPACES_PORT=str(free_port()))
        samples, failures = punch_series(p2, p1, "777000111", cluster.target.licence_key, count)
    p50, p99 = p50_p99(samples)
    return {"case": "punch round trip, A and B on different gateways",
            "value": f"p50 {p50:.2f} / p99 {p99:.2f}", "unit": "ms",
            "note": f"{len(samples)} punches, {failures} failed",
            "bar": "p99 <= 5 ms", "ok": bool(samples) and p99 <= 5.0 and failures == 0}


def _bytes_per_peer(n: int) -> dict[str, Any]:
    with LocalCluster(gateways=1, shards=0) as cluster:
        port = cluster.target.rendezvous_port
        prefix = cluster.base_env["HUBBUB_PREFIX"]
        r = redis.Redis.from_url(cluster.base_env["REDIS_URL"])
        used0 = int(r.info("memory")["used_memory"])
        ids = [str(1_500_000_000 + i) for i in range(n)]
        # Distinct source IPs, as real devices have (the per-IP limiter allows ~31 per minute).
        for i, peer_id in enumerate(ids):
            src = f"127.1.{(i // 25) // 250}.{(i // 25) % 250 + 1}"
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((src, 0))
            u.settimeout(2)
            u.sendto(message(register_pk=pb.RegisterPk(
                id=peer_id, uuid=f"{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b".encode(),
                pk=os.urandom(32))), (HOST, port))
            with contextlib.suppress(TimeoutError):
                u.recv(64)
            u.close()
        keys = [f"{prefix}rd:peer:{i}" for i in ids] + [f"{prefix}rd:live:{i}" for i in ids]
        sizes = [int(r.memory_usage(k) or 0) for k in keys]
        registered = sum(1 for i in ids if r.exists(f"{prefix}rd:peer:{i}"))
        used1 = int(r.info("memory")["used_memory"])
        r.close()
    per_key = sum(sizes) / max(1, registered)
    return {"case": f"Redis bytes per registered peer ({registered} peers)",
            "value": round(per_key), "unit": "B (MEMORY USAGE, durable + liveness keys)",
            "note": f"used_memory delta {round((used1 - used0) / max(1, registered))} B/peer",
            "bar": "<= 300 B", "ok": registered > 0 and per_key <= 300}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure everything once; one dict per table row."""
    seconds = 3.0 if quick else 8.0
    n_ids = 4000 if quick else 20_000
    rows = []
    one = _heartbeats(1, n_ids, seconds)
    two = _heartbeats(2, n_ids, seconds)
    ratio = two["value"] / max(1, one["value"])
    eff = two["per gateway CPU-s"] / max(1, one["per gateway CPU-s"])
    two["note"] = (f"{ratio:.2f}x one gateway (per-CPU efficiency {eff:.2f}x); "
                   + str(two["note"]))
    two["bar"] = ">= 1.7x one"
    two["ok"] = ratio >= 1.7
    rows += [one, two]
    rows.append(_punch_rtt(100 if quick else 400))
    rows.append(_bytes_per_peer(500 if quick else 2000))
    return rows


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, "python -m loadtest.bench_rendezvous",
                       "ID-server heartbeats, punch latency, memory", run,
                       "shorter windows, fewer peers")


if __name__ == "__main__":
    raise SystemExit(main())
