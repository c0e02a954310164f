"""Two simulated hosts (network namespaces) sharing one Redis behave as one cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import netns
import pytest
from support import Cluster, new_prefix, redis_server

from hubbub.contracts.system import Ping, Pong
from registry import Registry


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns"),
]


def test_two_hosts_one_cluster(tmp_path: Path) -> None:
    with netns.hosts(2) as (root, (ha, hb)), redis_server(bind=f"127.0.0.1 {root}") as srv:
        c = Cluster(f"redis://{root}:{srv.port}/0", new_prefix(), tmp_path)
        try:
            env = {"SHARD_SLOTS": "1"}
            for h in (ha, hb):
                c.start("gateway", env=env, host=h)
                c.start("shard", env=env, host=h)
            res = c.hubbub("status", "--json")
            assert res.returncode == 0, res.stderr
            live = json.loads(res.stdout)
            by_host: dict[str, list[str]] = {}
            for p in live:
                by_host.setdefault(p["host"], []).append(p["role"])
            assert {h: sorted(r) for h, r in by_host.items()} == {
                ha.name: ["gateway", "shard"], hb.name: ["gateway", "shard"]}
            # Slots are per host: each host's only shard holds slot 0.
            assert [p["slot"] for p in live if p["role"] == "shard"] == [0, 0]
            assert {p["public_ip"] for p in live} == {ha.addr, hb.addr}
            gw_a = next(p["id"] for p in live if p["host"] == ha.name and p["role"] == "gateway")
            shard_b = next(p["id"] for p in live if p["host"] == hb.name and p["role"] == "shard")

            async def route() -> object:
                reg = Registry(c.redis_url, c.prefix, "test", "t", presence=False)
                await reg.start()
                try:
                    assert await reg.wait_ready(5)
                    return await reg.request(gw_a, Ping(via=shard_b), reply=Pong, timeout=5)
                finally:
                    await reg.close()

            reply = asyncio.run(route())
            assert isinstance(reply, Pong) and reply.via is not None
            assert reply.via.id == shard_b
        finally:
            c.stop_all()
