"""The relay on two simulated hosts (network namespaces) sharing one Redis: each host pairs its
own halves across its own shards, and uuids never leak between hosts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import netns
import pytest
from support import Cluster, free_port_block, new_prefix, redis_server, shard_env

from loadtest.bench_relay import recv_exact, relay_connect


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns"),
]


def test_each_host_pairs_its_own_halves(tmp_path: Path) -> None:
    with netns.hosts(2) as (root, hosts), redis_server(bind=f"127.0.0.1 {root}") as srv:
        c = Cluster(f"redis://{root}:{srv.port}/0", new_prefix(), tmp_path)
        port = free_port_block(3)
        env = shard_env(2, RELAY_PORT=str(port), RELAY_TIMEOUT="5")
        socks = []
        try:
            shards = [c.start("shard", env=env, host=h) for h in hosts for _ in range(2)]
            for i in range(12):
                uuid = f"same-on-both-hosts-{i}-{os.urandom(3).hex()}"
                # Interleaved: both hosts see the same uuid at the same time.
                a1 = relay_connect(port, uuid, host=hosts[0].addr)
                b1 = relay_connect(port, uuid, host=hosts[1].addr)
                a2 = relay_connect(port, uuid, host=hosts[0].addr)
                b2 = relay_connect(port, uuid, host=hosts[1].addr)
                socks += [a1, b1, a2, b2]
                a1.sendall(b"host-a")
                b1.sendall(b"host-b")
                assert recv_exact(a2, 6) == b"host-a"
                assert recv_exact(b2, 6) == b"host-b"
            handoffs = 0
            for p in shards:
                m = re.search(r'^hubbub_relay_handoffs_total\{outcome="sent"\} ([0-9.]+)$',
                              p.metrics(), re.M)
                handoffs += int(float(m.group(1))) if m else 0
            assert handoffs > 0, "no pair needed a handoff in 24 tries"
            res = c.hubbub("status", "--json")
            live = [p for p in json.loads(res.stdout) if p["role"] == "shard"]
            assert {p["public_ip"] for p in live} == {h.addr for h in hosts}
            assert all(p["ports"]["relay"] == port for p in live)
        finally:
            for s in socks:
                s.close()
            c.stop_all()
