"""CI smoke of every load-test scenario against a real local cluster, with thresholds.

One cluster (2 gateways, 2 shards, its own redis-server, free loopback ports) serves the module;
locust runs as a subprocess exactly as ``hubbub loadtest`` runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from loadtest.cluster import LocalCluster
from loadtest.runner import SCENARIOS, _parser, locust_command


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(gateways=2, shards=2) as c:
        yield c


def _locust(cluster: LocalCluster, *argv: str, timeout: float = 60) -> tuple[int, Any, str]:
    args = _parser().parse_args(list(argv))
    classes: list[str] = []
    for name in args.scenarios:
        classes += [c for c in SCENARIOS[name] if c not in classes]
    cmd = locust_command(cluster.target, classes, args) + ["--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    stats: Any = None
    decoder = json.JSONDecoder()
    text = proc.stdout
    pos = 0
    while True:  # the last JSON document is the final (master's) statistics
        start = text.find("[", pos)
        if start < 0:
            break
        try:
            stats, pos = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
    return proc.returncode, stats, proc.stderr


def test_every_scenario_passes_its_thresholds(local_cluster: LocalCluster) -> None:
    rc, stats, log = _locust(
        local_cluster, "all", "-u", "16", "-r", "16", "-t", "10s",
        "--heartbeat", "2", "--online-every", "2", "--list-open", "1",
        "--connect-every", "0.5", "--relay-ratio", "0.4", "--relay-only-ratio", "0.5",
        "--relay-chunk", "65536", "--chat-every", "1",
        "--max-fail-ratio", "0.01", "--max-p95-ms", "2000", "--min-requests", "200")
    assert stats is not None, log[-3000:]
    by_name = {e["name"]: e for e in stats}
    expected = [
        "UDP RegisterPk", "UDP RegisterPeer", "TCP OnlineRequest", "PunchHoleRequest",
        "connect → direct", "connect → relay", "direct session echo", "relay session echo",
        "relay pairing", "relay A→B 64 KiB", "relay B→A 64 KiB",
        "WS PunchHoleRequest", "WS relay session echo", "web connect → relay",
        "WS device connect", "WS RegisterPk",
        "connect", "join", "set_name", "chat", "position batch (oldest record age)",
    ]
    def successes(name: str) -> int:
        entry = by_name.get(name, {})
        return int(entry.get("num_requests", 0)) - int(entry.get("num_failures", 0))

    # Every operation worked at least once; the fail-ratio threshold (1 %) bounds the rest, so a
    # single UDP timeout on a busy machine does not fail the build.
    missing = [n for n in expected if successes(n) < 1]
    failing = {n: e["num_failures"] for n, e in by_name.items() if e["num_failures"]}
    assert not missing, (f"nothing succeeded for {missing}; failures {failing}\n{log[-3000:]}\n"
                         f"{local_cluster.logs()[-3000:]}")
    # Each client has its own 127/8 address: the punch path and (some) LAN paths both run.
    assert successes("device: PunchHole → PunchHoleSent"), sorted(by_name)
    assert rc == 0, f"failures {failing}\n{log[-3000:]}"


def test_a_broken_threshold_fails_the_run(local_cluster: LocalCluster) -> None:
    rc, stats, log = _locust(local_cluster, "relay", "-u", "1", "-r", "1", "-t", "3s",
                             "--relay-chunk", "16384", "--max-avg-ms", "0.0001")
    assert stats and sum(e["num_requests"] for e in stats) > 0, log[-2000:]
    assert rc == 1, log[-2000:]
    assert "thresholds failed" in log


def test_loadtest_command_starts_its_own_cluster() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hubbub", "loadtest", "spaces", "-u", "2", "-r", "2", "-t", "3s",
         "--chat-every", "1", "--min-requests", "4"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cluster of 1 gateway(s)" in proc.stdout


def test_loadtest_command_rejects_bad_input() -> None:
    for argv in (["nonsense"], ["relay", "-t", "soon"], ["relay", "--target", "192.0.2.1"],
                 ["relay", "--env", "NOEQUALS"]):
        proc = subprocess.run([sys.executable, "-m", "hubbub", "loadtest", *argv],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "error:" in proc.stderr


def test_ramp_reports_the_capacity(local_cluster: LocalCluster) -> None:
    args = _parser().parse_args(["relay", "--ramp", "--ramp-step", "1", "--ramp-every", "2",
                                 "--ramp-max", "2", "-t", "30s", "--relay-chunk", "16384"])
    cmd = locust_command(local_cluster.target, SCENARIOS["relay"], args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ramp: held 2 users (the maximum)" in proc.stdout, proc.stdout[-2000:]
    # An impossible latency limit breaks the first step: capacity 0 (1 MiB transfers take
    # milliseconds, so even locust's whole-millisecond p95 is above the limit).
    args = _parser().parse_args(["relay", "--ramp", "--ramp-step", "1", "--ramp-every", "2",
                                 "--ramp-max", "5", "-t", "30s", "--relay-chunk", "1048576",
                                 "--ramp-stop-p95-ms", "0.001"])
    cmd = locust_command(local_cluster.target, SCENARIOS["relay"], args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "ramp: capacity 0 users; 1 users broke a limit — p95" in proc.stdout, (
        proc.stdout[-2000:] + proc.stderr[-2000:])
