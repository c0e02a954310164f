"""Control-plane benchmark: one Redis, Sentinel and a 3-primary Cluster side by side.

For each mode, two gateway processes run on that control plane and the run measures:

* RegisterPk registrations answered OK per second over UDP (devices on distinct loopback source
  addresses, ``WINDOW`` in flight); each is acknowledged only after ``WAIT`` where there is a
  replica;
* punch round trips (PunchHoleRequest -> PunchHoleResponse) with A on one gateway and B on the
  other, p50 and p99;
* the fail-over window: registrations (through the ID server's store, in process) run while the
  primary (Sentinel) or the ID-server slot's primary (Cluster) is SIGKILLed: how long they
  failed, and how many acknowledged bindings are missing afterwards.

    python -m loadtest.bench_control_plane [--devices 2000] [--punches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.rendezvous.records import MODE_UDP, Live
from gateway.rendezvous.store import Store
from hubbub.embedded_redis import (
    LocalRedis,
    RedisCluster,
    SentinelSet,
    free_cluster_ports,
)
from hubbub.errors import HubbubError
from loadtest.bench_rendezvous import p50_p99, punch_series, register_many
from loadtest.cluster import LocalCluster, free_port, free_port_block
from registry import RedisTarget, Registry
from registry.target import parse_host_port


HOST = "127.0.0.1"
WINDOW = 64
"""Registrations in flight at once."""
PER_SOURCE = 20
"""Registrations per source address (the ID server limits them per IP)."""


def _target(env: Mapping[str, str]) -> RedisTarget:
    nodes = env.get("REDIS_CLUSTER_NODES", "")
    sentinels = env.get("REDIS_SENTINELS", "")
    return RedisTarget(url=env["REDIS_URL"],
                       cluster_nodes=tuple(parse_host_port(n) for n in nodes.split(",") if n),
                       sentinels=tuple(parse_host_port(s) for s in sentinels.split(",") if s))


def _registrations(port: int, devices: int, tag: str) -> float:
    """OK answers per second for ``devices`` RegisterPk, ``WINDOW`` in flight."""
    ok, took = register_many(port, [f"{tag}{i:07d}" for i in range(devices)], window=WINDOW,
                             per_source=PER_SOURCE)
    return ok / took


def _punches(a_port: int, b_port: int, licence: str, count: int) -> tuple[float, float, int]:
    samples, failures = punch_series(a_port, b_port, "777000222", licence, count)
    p50, p99 = p50_p99(samples)
    return p50, p99, failures


def _through_gateways(env: Mapping[str, str], devices: int, punches: int,
                      tag: str) -> dict[str, float]:
    with LocalCluster(gateways=1, shards=0, env=dict(env)) as cluster:
        p1 = cluster.target.rendezvous_port
        p2 = free_port_block(4) + 1
        cluster.add("gateway", RENDEZVOUS_PORT=str(p2), SPACES_PORT=str(free_port()))
        reg_s = _registrations(p1, devices, tag)
        p50, p99, failed = _punches(p2, p1, cluster.target.licence_key, punches)
    return {"reg_s": reg_s, "punch_p50_ms": p50, "punch_p99_ms": p99, "punch_failed": failed}


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
    # In Cluster mode each device has its own slot: only IDs the killed primary served
    # measure the window.
    where = getattr(store.redis, "get_node_from_key", None)
    probes = [f"f{i}" for i in range(1000, 21_000)
              if where is None or int(where(store.peer_key(f"f{i}")).port) == node.port]
    killed = time.monotonic()
    node.stop(signal.SIGKILL)
    first_ok = None
    for peer_id in probes:
        if time.monotonic() - killed >= seconds or first_ok is not None:
            break
        try:
            await store.register_pk(peer_id, b"u", b"k", "10.0.0.1", live)
            acked.append(peer_id)
            first_ok = time.monotonic() - killed
        except HubbubError:
            await asyncio.sleep(0.05)
    lost = 0
    for peer_id in acked:
        if await store.peer(peer_id) is None:
            lost += 1
    await reg.close()
    return {"window_s": first_ok if first_ok is not None else float("nan"), "lost": lost,
            "acked": len(acked)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_control_plane")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--punches", type=int, default=200)
    args = ap.parse_args(argv)
    rows: list[tuple[str, dict[str, float], dict[str, float] | None]] = []
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-cp-") as d:
        root = Path(d)
        single = LocalRedis(free_port(), root / "single", durable=False)
        single.start()
        single.wait_up()
        try:
            env = {"REDIS_URL": f"redis://{HOST}:{single.port}/0"}
            rows.append(("single", _through_gateways(env, args.devices, args.punches, "s"),
                         None))
        finally:
            single.stop()
        s = SentinelSet(root / "sentinel", free_port(), [free_port() for _ in range(3)],
                        down_after_ms=1000, durable=False)
        s.start()
        try:
            tp = _through_gateways(s.env(), args.devices, args.punches, "t")
            rows.append(("sentinel (1 replica)", tp,
                         asyncio.run(_failover(_target(s.env()), lambda _: s.primary_node()))))
        finally:
            s.stop()
        c = RedisCluster(root / "cluster", free_cluster_ports(6), node_timeout_ms=1000,
                         durable=False)
        c.start()
        try:
            def holder(store: Store) -> LocalRedis:
                node = store.redis.get_node_from_key(  # type: ignore[attr-defined]
                    store.peer_key("x"))
                return next(n for n in c.nodes if n.port == int(node.port))
            tp = _through_gateways(c.env(), args.devices, args.punches, "c")
            rows.append(("cluster (3 primaries + 3 replicas)", tp,
                         asyncio.run(_failover(_target(c.env()), holder))))
        finally:
            c.stop()
    print("| mode | registrations/s (OK answers, one gateway) | punch p50 ms "
          "| punch p99 ms | fail-over window s | acknowledged bindings lost |")
    print("|---|---|---|---|---|---|")
    for name, tp, fo_row in rows:
        fo = fo_row
        window = f"{fo['window_s']:.2f}" if fo else "-"
        lost = f"{int(fo['lost'])} of {int(fo['acked'])}" if fo else "-"
        failed = f" ({int(tp['punch_failed'])} failed)" if tp["punch_failed"] else ""
        print(f"| {name} | {tp['reg_s']:.0f} | {tp['punch_p50_ms']:.2f} | "
              f"{tp['punch_p99_ms']:.2f}{failed} | {window} | {lost} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
