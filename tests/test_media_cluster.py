"""Wired clients through a real gateway and a real shard: voice, location records, 1012 on drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from support import Cluster, HubbubProcess, free_port, free_port_block, shard_env
from wired_client import WiredClient

from loadtest.media_peer import MediaPeer, opus_rtp_parameters, wait_for
from shards.media.stack import new_certificate


URI = "https://example.org/media.glb"
CAPS = {"codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
                    "clockRate": 48000, "channels": 2, "parameters": {}, "rtcpFeedback": []}],
        "headerExtensions": []}


def _env(rtc_ports: int) -> dict[str, str]:
    """Ports for one gateway and two-slot shards with ``rtc_ports`` WebRTC ports in all."""
    return shard_env(2, rtc_ports, SPACES_PORT=str(free_port()),
                     RENDEZVOUS_PORT=str(free_port_block(4) + 1))


async def _consumer_transport(c: WiredClient) -> Any:
    """``transport_created`` for a consumer transport, asked again until the gateway has seen
    a shard."""
    deadline = time.monotonic() + 5
    while True:
        await c.send("create_transport", {"type": "consumer"})
        with contextlib.suppress(TimeoutError, AssertionError):
            return await c.wait_for("transport_created", timeout=0.5)
        assert time.monotonic() < deadline, c.frames


async def test_wired_clients_through_gateway_and_shard(cluster: Cluster) -> None:
    env = {**_env(rtc_ports=4), "MEDIASOUP_LISTEN_IP": "127.0.0.1"}
    shard = cluster.start("shard", env=env)
    cluster.start("gateway", env=env)
    url = f"ws://127.0.0.1:{env['SPACES_PORT']}/"
    a, b = await WiredClient.connect(url), await WiredClient.connect(url)
    cert = new_certificate()
    peers: list[MediaPeer] = []
    try:
        deadline = time.monotonic() + 5
        while True:  # until the gateway has seen the shard
            await a.send("get_router_rtp_capabilities")
            with contextlib.suppress(TimeoutError):
                await a.wait_for("router_rtp_capabilities", timeout=0.5)
                break
            assert time.monotonic() < deadline, a.frames
        a_id = await a.join(URI)
        await a.send("create_transport", {"type": "producer"})
        send = MediaPeer((await a.wait_for("transport_created", 5))["options"], cert)
        peers.append(send)
        await a.send("connect_transport", {"type": "producer",
                                           "dtlsParameters": send.dtls_parameters()})
        await send.connect()
        await a.send("produce", opus_rtp_parameters(7))
        assert isinstance(await a.wait_for("producer_id"), str)
        await a.send("produce_data", {"streamId": 0, "ordered": False, "maxRetransmits": 0})
        await a.wait_for("data_producer_id")

        await b.join(URI)
        await b.send("create_transport", {"type": "consumer"})
        recv = MediaPeer((await b.wait_for("transport_created", 5))["options"], cert)
        peers.append(recv)
        await b.send("set_rtp_capabilities", CAPS)
        consumer = await b.wait_for("create_consumer")
        data_consumer = await b.wait_for("create_data_consumer")
        assert consumer["playerId"] == a_id and data_consumer["playerId"] == a_id
        await b.send("connect_transport", {"type": "consumer",
                                           "dtlsParameters": recv.dtls_parameters()})
        await recv.connect()
        await b.send("resume_audio")
        stream = data_consumer["sctpStreamParameters"]["streamId"]
        recv.data_channel(stream)
        channel = send.data_channel(0)
        record = bytes([a_id]) + bytes(20)
        for i in range(40):
            send.send_rtp(7, 111, i, i * 960, b"\x11" * 50)
            if i % 4 == 0:
                channel.send(record)
            await asyncio.sleep(0.01)
        assert await wait_for(lambda: recv.rtp_received >= 30 and recv.messages, timeout=5)
        assert recv.messages[0] == (stream, record)

        # Draining the shard tells the gateway; both sockets close with 1012.
        shard.proc.send_signal(signal.SIGTERM)
        assert (await a.wait_closed(8))[0] == 1012
        assert (await b.wait_closed(8))[0] == 1012
    finally:
        for p in peers:
            await p.close()
        await a.close()
        await b.close()


async def test_killed_shard_closes_sockets_with_1012(cluster: Cluster) -> None:
    env = _env(rtc_ports=4)
    shard = cluster.start("shard", env=env)
    cluster.start("gateway", env=env)
    a = await WiredClient.connect(f"ws://127.0.0.1:{env['SPACES_PORT']}/")
    try:
        await a.join(URI)
        created = await _consumer_transport(a)
        assert created["options"]["iceCandidates"][0]["address"] == "127.0.0.1"
        shard.kill(signal.SIGKILL)  # no media.lost: the gateway sees the presence expire
        code, reason = await a.wait_closed(timeout=8)
        assert (code, reason) == (1012, "media shard restarted")
    finally:
        await a.close()


async def test_spaces_spread_over_shards(cluster: Cluster) -> None:
    env = _env(rtc_ports=8)
    shards = [cluster.start("shard", env=env) for _ in range(2)]
    cluster.start("gateway", env=env)
    url = f"ws://127.0.0.1:{env['SPACES_PORT']}/"
    clients = [await WiredClient.connect(url) for _ in range(3)]
    try:
        ports = []
        for i, (c, uri) in enumerate(zip(clients, [URI, URI + "?2", URI], strict=True)):
            await c.join(uri)
            created = await _consumer_transport(c)
            ports.append(created["options"]["iceCandidates"][0]["port"])
            if i == 0:
                await asyncio.sleep(2.5)  # the first shard's load reaches the gateway
        # the second space went to the other (less loaded) shard; the first space stays put
        assert ports[0] != ports[1] and ports[2] == ports[0]
        assert await wait_for(lambda: sorted(_media_sessions(s) for s in shards) == [1, 2], 5)
    finally:
        for c in clients:
            await c.close()


def _media_sessions(proc: HubbubProcess) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith("hubbub_media_sessions "):
            return float(line.split()[1])
    return -1.0
