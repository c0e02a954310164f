"""Soak: every scenario for a few minutes; no failures, bounded memory, nothing left behind.

Run with ``pytest -m slow tests/test_loadtest_soak.py`` (about three minutes).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from loadtest.cluster import LocalCluster, rss_bytes
from loadtest.runner import SCENARIOS, _parser, locust_command


pytestmark = pytest.mark.slow


def _rss_mb(pid: int) -> float:
    return rss_bytes(pid) / 1024 / 1024


def test_soak_every_scenario() -> None:
    with LocalCluster(gateways=2, shards=2) as cluster:
        pids = [p.popen.pid for p in cluster.procs]
        warm = _parser().parse_args(["all", "-u", "40", "-r", "20", "-t", "20s",
                                     "--relay-chunk", "262144", "--max-fail-ratio", "0.005"])
        cmd = locust_command(cluster.target, SCENARIOS["all"], warm)
        assert subprocess.run(cmd, capture_output=True, timeout=90).returncode == 0
        before = {pid: _rss_mb(pid) for pid in pids}
        soak = _parser().parse_args(["all", "-u", "80", "-r", "20", "-t", "150s",
                                     "--relay-chunk", "262144", "--max-fail-ratio", "0.005",
                                     "--min-requests", "10000"])
        cmd = locust_command(cluster.target, SCENARIOS["all"], soak)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        after = {pid: _rss_mb(pid) for pid in pids}
        grown = {pid: after[pid] - before[pid] for pid in pids}
        assert all(g < 60 for g in grown.values()), (grown, cluster.logs()[-3000:])
        # Every player left: the spaces the run used are empty again.
        time.sleep(2)
        url = (f"http://127.0.0.1:{cluster.target.spaces_port}/player-count/"
               "https://loadtest.hubbub.invalid/space-0.glb")
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read().strip() == b"0"
