"""Control-plane benchmark: one Redis, Sentinel and a 3-primary Cluster side by side.

For each mode, in one process: durable registrations per second (``Store.register_pk``, which
waits for a replica where there is one) with ``--concurrency`` in flight, and the p50/p99 of a
punch's Redis step (``Store.lookup``: binding + liveness + sink in one round trip). Then the
fail-over window: registrations run while the primary (Sentinel) or the ID-server slot's
primary (Cluster) is SIGKILLed; it reports how long registrations failed and how many
acknowledged bindings are missing afterwards.

    python -m loadtest.bench_control_plane [--seconds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.rendezvous.store import MODE_UDP, Live, Store
from hubbub.embedded_redis import LocalRedis, RedisCluster, SentinelSet, free_cluster_ports
from hubbub.errors import HubbubError
from loadtest.cluster import free_port
from registry import RedisTarget, Registry
from registry.target import parse_host_port


def _target(env: dict[str, str]) -> RedisTarget:
    nodes = env.get("REDIS_CLUSTER_NODES", "")
    sentinels = env.get("REDIS_SENTINELS", "")
    return RedisTarget(url=env["REDIS_URL"],
                       cluster_nodes=tuple(parse_host_port(n) for n in nodes.split(",") if n),
                       sentinels=tuple(parse_host_port(s) for s in sentinels.split(",") if s))


async def _throughput(target: RedisTarget, seconds: float, conc: int) -> dict[str, float]:
    reg = Registry(target, "bench:", "bench", "b", presence=False)
    store = Store(reg)
    live = Live("", 1, time.time(), "t", 1, MODE_UDP)
    done = 0
    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def registrar(w: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            await store.register_pk(f"b{w}x{i}", b"u", b"k", "10.0.0.1", live)
            done += 1
            i += 1

    async def puncher(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            t = time.perf_counter()
            await store.lookup(f"b{w}x{i % 50}", ("10.0.0.9:1", "gw"))
            lat.append(time.perf_counter() - t)
            i += 1

    try:
        start = time.monotonic()
        await asyncio.gather(*(registrar(w) for w in range(conc)),
                             *(puncher(w) for w in range(4)))
        took = time.monotonic() - start
    finally:
        await reg.close()
    lat.sort()
    return {"reg_s": done / took, "punch_p50_ms": statistics.median(lat) * 1000,
            "punch_p99_ms": lat[int(len(lat) * 0.99)] * 1000}


async def _failover(target: RedisTarget, victim: Callable[[Store], LocalRedis],
                    seconds: float = 20.0) -> dict[str, float]:
    reg = Registry(target, "failover:", "bench", "b", presence=False)
    store = Store(reg)
    live = Live("", 1, time.time(), "t", 1, MODE_UDP)
    acked: list[str] = []
    for i in range(200):
        await store.register_pk(f"f{i}", b"u", b"k", "10.0.0.1", live)
        acked.append(f"f{i}")
    node = victim(store)
    killed = time.monotonic()
    node.stop(signal.SIGKILL)
    first_ok = None
    i = 1000
    while time.monotonic() - killed < seconds and first_ok is None:
        try:
            await store.register_pk(f"f{i}", b"u", b"k", "10.0.0.1", live)
            acked.append(f"f{i}")
            first_ok = time.monotonic() - killed
        except HubbubError:
            await asyncio.sleep(0.05)
        i += 1
    lost = 0
    for peer_id in acked:
        if await store.peer(peer_id) is None:
            lost += 1
    await reg.close()
    return {"window_s": first_ok if first_ok is not None else float("nan"), "lost": lost,
            "acked": len(acked)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_control_plane")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args(argv)
    rows: list[tuple[str, dict[str, float], dict[str, float] | None]] = []
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-cp-") as d:
        root = Path(d)
        single = LocalRedis(free_port(), root / "single", durable=False)
        single.start()
        single.wait_up()
        try:
            rows.append(("single", asyncio.run(_throughput(
                RedisTarget(url=f"redis://127.0.0.1:{single.port}/0"), args.seconds,
                args.concurrency)), None))
        finally:
            single.stop()
        s = SentinelSet(root / "sentinel", free_port(), [free_port() for _ in range(3)],
                        down_after_ms=1000, durable=False)
        s.start()
        try:
            t = _target(s.env())
            tp = asyncio.run(_throughput(t, args.seconds, args.concurrency))
            rows.append(("sentinel", tp, asyncio.run(_failover(t, lambda _: s.primary_node()))))
        finally:
            s.stop()
        c = RedisCluster(root / "cluster", free_cluster_ports(6),
                         node_timeout_ms=1000, durable=False)
        c.start()
        try:
            t = _target(c.env())

            def holder(store: Store) -> LocalRedis:
                node = store.redis.get_node_from_key(  # type: ignore[attr-defined]
                    store.peer_key("x"))
                return next(n for n in c.nodes if n.port == int(node.port))
            tp = asyncio.run(_throughput(t, args.seconds, args.concurrency))
            rows.append(("cluster (3 primaries)", tp, asyncio.run(_failover(t, holder))))
        finally:
            c.stop()
    print("| mode | registrations/s | punch lookup p50 ms | p99 ms | fail-over window s "
          "| acknowledged lost |")
    print("|---|---|---|---|---|---|")
    for name, tp, fo in rows:
        window = f"{fo['window_s']:.2f}" if fo else "-"
        lost = f"{int(fo['lost'])} of {int(fo['acked'])}" if fo else "-"
        print(f"| {name} | {tp['reg_s']:.0f} | {tp['punch_p50_ms']:.2f} | "
              f"{tp['punch_p99_ms']:.2f} | {window} | {lost} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
