"""The registry on Redis Sentinel and Redis Cluster (real servers), one smoke per mode."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support import Cluster, free_port, free_port_block, http_get, new_prefix

from gateway.rendezvous.records import MODE_UDP, Live
from gateway.rendezvous.store import REG_OK_CHANGED, REG_OK_SAME, Store
from gateway.spaces.store import SpaceStore
from hubbub.config import load_config, new_parser
from hubbub.contracts.system import Ping, Pong
from hubbub.embedded_redis import RedisCluster, SentinelSet, free_cluster_ports
from hubbub.errors import ConfigError, RegistryUnavailable
from hubbub.status import format_topology
from registry import RedisTarget, Registry
from registry.target import CLUSTER, SENTINEL, SINGLE, parse_host_port


def target_of(env: dict[str, str], **extra: Any) -> RedisTarget:
    cfg = load_config("gateway", new_parser("t").parse_args([]), {**env, **extra}, None)
    return RedisTarget.from_config(cfg)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path_factory.mktemp("sentinel"), free_port(),
                    [free_port() for _ in range(3)], down_after_ms=1000, durable=False)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path_factory.mktemp("cluster"), free_cluster_ports(6),
                     node_timeout_ms=1000, durable=False)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(params=[SENTINEL, CLUSTER])
def target(request: pytest.FixtureRequest) -> RedisTarget:
    deployment = request.getfixturevalue("sentinels" if request.param == SENTINEL
                                         else "redis_cluster")
    return target_of(deployment.env())


@pytest.fixture
async def pair(target: RedisTarget) -> AsyncIterator[tuple[Registry, Registry]]:
    prefix = new_prefix()
    a = Registry(target, prefix, "gateway", "h1", ttl=1.5)
    b = Registry(target, prefix, "shard", "h2", ttl=1.5)
    for r in (a, b):
        await r.start()
        assert await r.wait_ready(10)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_config_selects_the_mode_and_rejects_two() -> None:
    assert target_of({}).mode == SINGLE
    t = target_of({"REDIS_SENTINELS": "10.0.0.1:26379,[::1]:26380",
                   "REDIS_URL": "rediss://app:s%40cret@x:6379/2", "REDIS_MIN_REPLICAS": "auto"})
    assert t.mode == SENTINEL and t.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert t.node_kwargs() == {"username": "app", "password": "s@cret", "ssl": True, "db": 2}
    assert "s@cret" not in t.describe() and t.min_replicas == -1
    assert target_of({"REDIS_CLUSTER_NODES": "h:7000"}).mode == CLUSTER
    with pytest.raises(ConfigError):
        target_of({"REDIS_CLUSTER_NODES": "h:7000", "REDIS_SENTINELS": "h:26379"})
    with pytest.raises(ConfigError):
        target_of({"REDIS_CLUSTER_NODES": "nohostport"})
    assert parse_host_port("[fe80::1]:1") == ("fe80::1", 1)


async def test_inbox_channels_broadcasts_and_presence(pair: tuple[Registry, Registry]) -> None:
    a, b = pair
    b.handle(Ping, lambda msg, sender: Pong(sender, "echo", 7))  # answers with the sender
    assert await a.request(b.id, Ping(), reply=Pong) == Pong(a.id, "echo", 7)
    got: list[bytes] = []
    broadcast: list[bytes] = []
    space = a.key("space", "x", "ch")
    await b.subscribe(space, got.append)
    await b.subscribe(a.key("news"), broadcast.append, broadcast=True)
    await asyncio.sleep(0.2)
    assert await a.publish(space, b"frame") == 1
    await a.publish(a.key("news"), b"n1", broadcast=True)
    # A script's PUBLISH reaches broadcast subscribers in every mode.
    await a.redis.eval("redis.call('PUBLISH', ARGV[1], 'n2') return 1", 1,
                       a.key(a.tag("s"), "k"), a.key("news"))
    async with a.redis.pipeline(transaction=False) as p:
        a.queue_publish(p, space, b"piped")
        await p.execute()
    # Cluster mode carries classic PUBLISH over the cluster bus: allow it time under load.
    for _ in range(100):
        if len(got) >= 2 and len(broadcast) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # nothing more arrives
    assert got == [b"frame", b"piped"] and broadcast == [b"n1", b"n2"]
    assert {r.role for r in await a.processes()} == {"gateway", "shard"}
    topo = await a.topology()
    assert topo["mode"] == a.mode
    text = format_topology(topo)
    if a.mode == CLUSTER:
        assert len(topo["nodes"]) == 3 and all(n["replicas"] for n in topo["nodes"])
        assert "3 primaries" in text
    else:
        assert topo["primary"] and topo["replicas"] and "Sentinel" in text


async def test_stores_run_their_scripts_and_wait_for_a_replica(
        pair: tuple[Registry, Registry]) -> None:
    a, _ = pair
    store = Store(a)
    live = Live("", 1000, 0.0, "tok", 21116, MODE_UDP)
    assert await store.register_pk("dev1", b"u1", b"k1", "10.0.0.1", live) == REG_OK_CHANGED
    assert await store.register_pk("dev1", b"u1", b"k1", "10.0.0.1", live) == REG_OK_SAME
    assert await store.change_id("dev1", "dev2", b"u1") == 0
    assert await store.peer("dev1") is None and (await store.peer("dev2")) is not None
    await store.set_admin("always_use_relay", "Y")
    assert (await store.admin_settings())["always_use_relay"] == "Y"
    spaces = SpaceStore(a)
    pid, members = await spaces.join("https://x/y.glb", "sock", "n", None, None, True)
    assert 0 <= pid < 256 and len(members) == 1
    # Scripts queued on a pipeline run in Cluster mode too.
    await spaces.update([("https://x/y.glb", pid)], "sock", "name", "renamed")
    assert await spaces.leave("https://x/y.glb", pid, "sock")
    # WAIT: a deployment with one replica cannot confirm two, so the write is refused.
    strict = Registry(RedisTarget(**{**_fields(a), "min_replicas": 2}), a.prefix, "t", "h",
                      presence=False)
    try:
        with pytest.raises(RegistryUnavailable, match="replica"):
            await Store(strict).register_pk("dev3", b"u3", b"k3", "10.0.0.1", live)
    finally:
        await strict.close()


def _fields(reg: Registry) -> dict[str, Any]:
    t = reg._links.target
    return {"url": t.url, "sentinels": t.sentinels, "master": t.master,
            "cluster_nodes": t.cluster_nodes}


async def test_cluster_keys_touched_together_share_a_slot(redis_cluster: RedisCluster) -> None:
    reg = Registry(target_of(redis_cluster.env()), new_prefix(), "t", "h", presence=False)
    try:
        store, spaces = Store(reg), SpaceStore(reg)
        slot = reg.redis.keyslot  # type: ignore[attr-defined]
        # A peer's keys share its own slot; peers spread; the shared ID-server keys share one.
        assert slot(store.peer_key("a")) == slot(store.live_key("a"))
        assert len({slot(store.peer_key(f"p{i}")) for i in range(20)}) > 10
        assert slot(store.idhist_key) == slot(store.admin_key)
        assert len({slot(k) for k in (spaces.members_key("u"), spaces.gateway_key("g"),
                                      spaces.gateways_key, spaces.shard_key("u"))}) == 1
        # Inboxes spread over the cluster: one tag per process.
        assert len({slot(reg.inbox(f"p{i}")) for i in range(20)}) > 10
    finally:
        await reg.close()


def test_embedded_deployment_follows_the_settings(tmp_path: Path) -> None:
    from hubbub.embedded_redis import deployment
    from hubbub.launcher import redis_env

    def cfg(env: dict[str, str]) -> Any:
        return load_config("redis", new_parser("t").parse_args([]),
                           {"HUBBUB_DATA": str(tmp_path), **env}, None)
    assert deployment(cfg({})) is None
    s = deployment(cfg(redis_env(cfg({}), "sentinel")))
    assert isinstance(s, SentinelSet) and [n.port for n in s.sentinels] == [26379, 26380, 26381]
    assert [n.port for n in s.nodes] == [6379, 6380]
    c = deployment(cfg(redis_env(cfg({}), "cluster")))
    assert isinstance(c, RedisCluster) and len(c.nodes) == 6
    with pytest.raises(ConfigError):
        deployment(cfg({"REDIS_CLUSTER_NODES": "10.1.1.1:7000"}))


def test_hubbub_redis_runs_a_sentinel_deployment_until_stopped(tmp_path: Path) -> None:
    """The Procfile's ``hubbub redis`` with Sentinel settings: primary, replica, Sentinels."""
    primary, sentinels = free_port(), [free_port() for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "HUBBUB_"))}
    env.update(REDIS_URL=f"redis://127.0.0.1:{primary}/0", HUBBUB_DATA=str(tmp_path),
               REDIS_SENTINELS=",".join(f"127.0.0.1:{p}" for p in sentinels))
    proc = subprocess.Popen([sys.executable, "-m", "hubbub", "redis"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("hubbub redis: sentinel up"), line
        with redis.Redis(port=sentinels[0]) as r:
            addr = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "hubbub")
        assert addr == [b"127.0.0.1", str(primary).encode()]
        with redis.Redis(port=primary) as r:
            assert int(r.info("replication")["connected_slaves"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    assert not SentinelSet(tmp_path / "redis-sentinel", primary, sentinels).nodes[0].ping()


def test_gateway_and_status_on_a_cluster(redis_cluster: RedisCluster, tmp_path: Path) -> None:
    env = redis_cluster.env()
    c = Cluster(env["REDIS_URL"], new_prefix(), tmp_path)
    try:
        g = c.start("gateway", "-p", str(free_port_block(4) + 1), "--spaces-port",
                    str(free_port()), env=env)
        assert http_get(f"{g.ops_url}/readyz")[0] == 200
        assert http_get(f"{g.ops_url}/livez")[0] == 200
        res = c.hubbub("status", env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("control plane: Redis Cluster, 3 primaries")
        assert "gateway" in res.stdout
    finally:
        c.stop_all()


async def test_sentinel_with_a_password_on_the_data_nodes(tmp_path: Path) -> None:
    s = SentinelSet(tmp_path, free_port(), [free_port() for _ in range(3)], durable=False,
                    password="s3cret")
    try:
        s.start()
        good = Registry(target_of(s.env()), new_prefix(), "gateway", "h", ttl=1.5)
        bad = Registry(target_of({**s.env(), "REDIS_URL": "redis://127.0.0.1:1/0"}),
                       good.prefix, "t", "h", presence=False)
        try:
            await good.start()
            assert await good.wait_ready(10)
            assert [r.id for r in await good.processes()] == [good.id]
            assert await good.durable(good.key("k"), lambda p: p.set(good.key("k"), b"v"))
            with pytest.raises(RegistryUnavailable):
                await bad.processes()  # Sentinel names the primary; no password: refused
        finally:
            await good.close()
            await bad.close()
    finally:
        s.stop()
