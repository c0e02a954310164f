"""hubbub processes as real subprocesses: status, health, leases, signals, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, Cluster, free_port, free_port_block, http_get, shard_env


def _ports_env() -> dict[str, str]:
    """Free ports for every listener a gateway or shard may bind."""
    return shard_env(2, 10, RENDEZVOUS_PORT=str(free_port_block(4) + 1),
                     SPACES_PORT=str(free_port()))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _status(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    res = cluster.hubbub("status", "--json", *args)
    assert res.returncode == 0, res.stderr
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_gateways_two_shards_in_status(cluster: Cluster) -> None:
    env = _ports_env()
    procs = [cluster.start(role, env=env) for role in ("gateway", "gateway", "shard", "shard")]
    live = _status(cluster)
    assert sorted(p["role"] for p in live) == ["gateway", "gateway", "shard", "shard"]
    assert sorted(p["slot"] for p in live if p["role"] == "shard") == [0, 1]
    assert {p["pid"] for p in live} == {p.proc.pid for p in procs}
    table = cluster.hubbub("status", "--ping")
    assert table.returncode == 0 and "4 live process(es)" in table.stdout
    assert "timeout" not in table.stdout and "no_listener" not in table.stdout
    for p in procs:
        assert http_get(f"http://127.0.0.1:{p.ops_port}/healthz")[0] == 200
        assert "hubbub_redis_roundtrips_total" in p.metrics()


def test_inbox_routing_between_processes(cluster: Cluster) -> None:
    """A request travels test → gateway → shard → gateway → test through Redis inboxes."""
    import asyncio

    from hubbub.contracts.system import Ping, Pong
    from registry import Registry

    env = _ports_env()
    cluster.start("gateway", env=env)
    cluster.start("shard", env=env)
    live = _status(cluster)
    gw = next(p["id"] for p in live if p["role"] == "gateway")
    shard = next(p["id"] for p in live if p["role"] == "shard")

    async def go() -> object:
        reg = Registry(cluster.redis_url, cluster.prefix, "test", "t", presence=False)
        await reg.start()
        try:
            assert await reg.wait_ready(5)
            return await reg.request(str(gw), Ping(via=str(shard)), reply=Pong, timeout=5)
        finally:
            await reg.close()

    reply = asyncio.run(go())
    assert isinstance(reply, Pong) and reply.via is not None
    assert reply.id == gw and reply.via.id == shard and reply.via.role == "shard"


def test_sigkilled_shard_frees_its_slot(cluster: Cluster) -> None:
    env = _ports_env()
    s1 = cluster.start("shard", env=env)
    s2 = cluster.start("shard", env=env)
    s3 = cluster.start("shard", env=env, wait=False)  # both slots held: it waits
    time.sleep(1.0)
    assert not s3.healthy()
    slots = {p["pid"]: p["slot"] for p in _status(cluster) if p.get("slot") is not None}
    freed = slots[s1.proc.pid]
    t0 = time.monotonic()
    s1.kill(signal.SIGKILL)
    _wait(lambda: s3.healthy(), 10, "the waiting shard to take the freed slot")
    took = time.monotonic() - t0
    assert took < 5.0 + 1.0, took  # lease TTL (1.5 s here) plus polling
    slots = {p["pid"]: p["slot"] for p in _status(cluster) if p.get("slot") is not None}
    assert slots == {s2.proc.pid: 1 - freed, s3.proc.pid: freed}
    # And a restarted shard waits for a slot rather than double-leasing one.
    s4 = cluster.start("shard", env=env, wait=False)
    time.sleep(1.0)
    assert not s4.healthy() and s4.proc.poll() is None


def test_sigterm_drains_and_second_signal_forces(cluster: Cluster) -> None:
    env = _ports_env()
    g = cluster.start("gateway", env=dict(env, DRAIN_TIMEOUT="30"))
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(10) == 0
    assert "draining" in g.log() and "stopped" in g.log()
    # Gone from the registry at once (clean exit deletes presence).
    assert _status(cluster) == []


def test_shard_pins_itself_to_a_core(cluster: Cluster) -> None:
    env = _ports_env()
    s = cluster.start("shard", env=env)
    live = _status(cluster)
    core = live[0]["core"]
    cores = sorted(os.sched_getaffinity(0))
    assert core == cores[int(live[0]["slot"]) % len(cores)]
    for tid in os.listdir(f"/proc/{s.proc.pid}/task"):
        assert os.sched_getaffinity(int(tid)) == {core}


def test_redis_unreachable_at_start_then_recovers(tmp_path: Path, prefix: str) -> None:
    from support import RedisServer

    port = free_port()
    c = Cluster(f"redis://127.0.0.1:{port}/0", prefix, tmp_path)
    try:
        g = c.start("gateway", env=_ports_env(), wait=False)
        time.sleep(1.5)
        assert g.proc.poll() is None, g.log()  # no crash loop
        assert http_get(f"http://127.0.0.1:{g.ops_port}/healthz")[0] == 503
        assert "redis unreachable" in g.log()
        srv = RedisServer(port, tmp_path)
        srv.start()
        try:
            g.wait_healthy(10)
            assert g.log().count("redis unreachable") == 1  # logged once, not per retry
        finally:
            c.stop_all()
            srv.stop()
    finally:
        c.stop_all()


def test_status_without_redis_is_one_clear_line(tmp_path: Path, prefix: str) -> None:
    c = Cluster(f"redis://127.0.0.1:{free_port()}/0", prefix, tmp_path)
    res = c.hubbub("status")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "cannot reach Redis" in res.stderr


@pytest.mark.parametrize("args,env,needle", [
    (["gateway", "--bogus"], {}, "unrecognized arguments: --bogus"),
    (["shard"], {"RTC_MIN_PORT": "abc"}, "RTC_MIN_PORT"),
    (["gateway"], {"PRESENCE_TTL": "-1"}, "PRESENCE_TTL"),
    (["gateway"], {"ALWAYS_USE_RELAY": "maybe"}, "ALWAYS_USE_RELAY"),
    (["gateway"], {"SSL_CERT": "x.pem"}, "SSL_CERT"),
    (["gateway"], {"TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "TRUSTED_PROXIES"),
    (["status", "--port", "1"], {}, "unrecognized arguments"),
    (["nonsense"], {}, "unknown command"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, prefix: str, args: list[str],
                                          env: dict[str, str], needle: str) -> None:
    c = Cluster("redis://127.0.0.1:1/0", prefix, tmp_path)
    res = c.hubbub(*args, env=env)
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr


def test_dotenv_is_read_and_env_wins(tmp_path: Path, prefix: str) -> None:
    (tmp_path / ".env").write_text("RTC_MIN_PORT=abc\nexport LOG_LEVEL='debug'\n")
    c = Cluster("redis://127.0.0.1:1/0", prefix, tmp_path)
    res = c.hubbub("shard", env={})
    assert res.returncode == 2 and "RTC_MIN_PORT" in res.stderr
    res = c.hubbub("config", env={"RTC_MIN_PORT": "1"})
    assert res.returncode == 0 and "| `--rtc-min-port` |" in res.stdout


def test_procfile_with_honcho_runs_the_cluster(tmp_path: Path, prefix: str,
                                               redis_url: str) -> None:
    """`honcho start -c gateway=2,shard=2 gateway shard` against an external Redis."""
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or "honcho"
    c = Cluster(redis_url, prefix, tmp_path)
    env = c.env(_ports_env())
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("HONCHO_PROCESS_NAME", None)
    base = next(b for b in (free_port_block(2) for _ in range(100))
                if _free(b + 100) and _free(b + 101))
    with open(tmp_path / "honcho.log", "wb") as log:
        proc = subprocess.Popen(
            [honcho, "-f", str(ROOT / "Procfile"), "-d", str(tmp_path), "start", "-p", str(base),
             "-c", "gateway=2,shard=2", "gateway", "shard"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: len(_status(c)) == 4, 30, "4 live processes")
        live = _status(c)
        assert sorted(p["name"] for p in live) == ["gateway.1", "gateway.2", "shard.1", "shard.2"]
        assert sorted(p["ops_port"] for p in live) == [base, base + 1, base + 100, base + 101]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
