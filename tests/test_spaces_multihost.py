"""One space across two simulated hosts (network namespaces) sharing one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import netns
import pytest
from support import Cluster, new_prefix, redis_server
from wired_client import WiredClient


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns"),
]

URI = "https://example.org/multihost.glb"


async def _scenario(c: Cluster, ha: netns.NsHost, hb: netns.NsHost) -> None:
    gw_a = c.start("gateway", host=ha)
    c.start("gateway", host=hb)
    c.start("shard", env={"SHARD_SLOTS": "1"}, host=hb)
    a = await WiredClient.connect(f"ws://{ha.addr}:4000/")
    b = await WiredClient.connect(f"ws://{hb.addr}:4000/")
    try:
        await a.send("set_name", "on-a")
        aid = await a.join(URI)
        await b.join(URI)
        assert b.frames[0] == ("player_joined", {"playerId": aid, "name": "on-a", "avatar": None,
                                                 "address": None, "beforeYou": True})
        await b.send("chat", "across hosts")
        assert (await a.wait_for("player_chat"))["text"] == "across hosts"

        # media of the space lives on the only shard, on the other host
        deadline = time.monotonic() + 5
        while True:
            await a.send("get_router_rtp_capabilities")
            with contextlib.suppress(TimeoutError):
                await a.wait_for("router_rtp_capabilities", timeout=0.5)
                break
            assert time.monotonic() < deadline, a.frames
        await a.send("create_transport", {"type": "consumer"})
        created = await a.wait_for("transport_created", timeout=5)
        assert {cand["address"] for cand in created["options"]["iceCandidates"]} == {hb.addr}

        gw_a.kill()
        t0 = time.monotonic()
        assert await b.wait_for("player_left", timeout=5) == {"playerId": aid}
        assert time.monotonic() - t0 < 5
    finally:
        await a.close()
        await b.close()


def test_one_space_across_two_hosts(tmp_path: Path) -> None:
    with netns.hosts(2) as (root, (ha, hb)), redis_server(bind=f"127.0.0.1 {root}") as srv:
        c = Cluster(f"redis://{root}:{srv.port}/0", new_prefix(), tmp_path)
        try:
            asyncio.run(asyncio.wait_for(_scenario(c, ha, hb), 60))
        finally:
            c.stop_all()
