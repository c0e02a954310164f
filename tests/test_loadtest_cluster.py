"""The benchmark cluster's core pinning: every server process (redis-server too) on one core,
the load generator on the others."""

from __future__ import annotations

import os

import pytest

from loadtest.cluster import LocalCluster, free_port, free_port_block, pinned, split_cores


def _affinities(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_pinned_moves_every_thread_and_restores() -> None:
    before = os.sched_getaffinity(0)
    core = min(before)
    with pinned({core}):
        assert _affinities(os.getpid()) == {frozenset({core})}
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before


def test_split_cores_leaves_the_server_core_out_of_the_load_cores() -> None:
    server, load = split_cores()
    if len(os.sched_getaffinity(0)) < 2:
        assert (server, load) == (None, set())
    else:
        assert server is not None and server not in load and load


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_cluster_pins_every_server_process_to_one_core() -> None:
    server, load = split_cores()
    assert server is not None
    with pinned(load), LocalCluster(gateways=1, shards=0, pin_cpu=server) as cluster:
        cluster.add("gateway", RENDEZVOUS_PORT=str(free_port_block(4) + 1),
                    SPACES_PORT=str(free_port()))
        pids = cluster.server_pids()
        assert cluster.redis is not None and cluster.redis.pid in pids and len(pids) == 3
        for pid in pids:
            assert _affinities(pid) == {frozenset({server})}
        assert cluster.cpu_seconds() > 0
