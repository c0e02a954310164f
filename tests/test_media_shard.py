"""The gateway ↔ media shard contract against a real shard process, and aiortc internals."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, HubbubProcess, http_get, shard_env

from hubbub.contracts.media import MediaCall, MediaCallReply, MediaLost, MediaPush
from hubbub.errors import RemoteError
from loadtest.media_peer import MediaPeer, opus_rtp_parameters, wait_for
from registry import Registry
from shards.media import sctp
from shards.media.stack import PINNED, contract_problems, new_certificate


CAPS = {"codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
                    "clockRate": 48000, "channels": 2}], "headerExtensions": []}


def test_aiortc_adapter_contract_holds() -> None:
    """The adapter uses aiortc's, pyOpenSSL's and pylibsrtp's private members: fail loudly when
    they move."""
    assert contract_problems() == []
    assert sctp.contract_problems() == []
    assert {name: version(name) for name in PINNED} == PINNED


class Gateway:
    """Stands in for the spaces gateway: calls media.call, collects media.push / media.lost."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.pushes: list[MediaPush] = []
        self.lost: list[MediaLost] = []
        registry.handle(MediaPush, lambda p, s: self.pushes.append(p), ordered=True)
        registry.handle(MediaLost, lambda p, s: self.lost.append(p))

    async def call(self, shard: str, session: str, op: str, data: Any,
                   spaces: dict[str, int]) -> list[list[Any]]:
        req = MediaCall(session, self.registry.id, op, data, spaces)
        reply = await self.registry.request(shard, req, reply=MediaCallReply, timeout=5)
        return [[m.subject, m.data] for m in reply.messages]


@pytest.fixture
async def shard(cluster: Cluster) -> AsyncIterator[tuple[HubbubProcess, Gateway, str]]:
    env = shard_env(2, MEDIASOUP_LISTEN_IP="127.0.0.1")
    proc = cluster.start("shard", env=env)
    reg = Registry(cluster.redis_url, cluster.prefix, "gateway", "test", ttl=1.5)
    gw = Gateway(reg)
    await reg.start()
    try:
        [rec] = await reg.processes("shard")
        yield proc, gw, rec.id
    finally:
        await reg.close()


async def test_shard_presence_and_full_flow(shard: tuple[HubbubProcess, Gateway, str]) -> None:
    proc, gw, sid = shard
    [rec] = await gw.registry.processes("shard")
    media = rec.info["media"]
    low, high = rec.info["rtc_ports"]
    assert low <= media["udp"] <= high and low <= media["tcp"] <= high
    assert rec.info["ports"]["webrtc_udp"] == media["udp"]
    assert rec.info["ports"]["webrtc_tcp"] == media["tcp"]
    assert rec.info["load"]["media_sessions"] == 0 and rec.info["load"]["media_spaces"] == 0
    cert = new_certificate()
    pa, pb = {"uri": 3}, {"uri": 4}
    [[_, caps]] = await gw.call(sid, "s/1", "get_router_rtp_capabilities", None, {})
    assert caps["codecs"][0]["mimeType"] == "audio/opus"
    [[_, created]] = await gw.call(sid, "s/1", "create_transport", {"type": "producer"}, pa)
    send = MediaPeer(created["options"], cert)
    await gw.call(sid, "s/1", "connect_transport",
                  {"type": "producer", "dtlsParameters": send.dtls_parameters()}, pa)
    await send.connect()
    await gw.call(sid, "s/1", "produce", opus_rtp_parameters(42), pa)
    await gw.call(sid, "s/1", "produce_data", {"streamId": 1, "ordered": False,
                                               "maxRetransmits": 0}, pa)
    # B appears later: its reply carries the consumers; A's gateway gets nothing.
    [[_, created_b]] = await gw.call(sid, "s/2", "create_transport", {"type": "consumer"}, pb)
    reply = await gw.call(sid, "s/2", "set_rtp_capabilities", CAPS, pb)
    assert [m[0] for m in reply] == ["create_consumer", "create_data_consumer"]
    stream = reply[1][1]["sctpStreamParameters"]["streamId"]
    recv = MediaPeer(created_b["options"], cert)
    await gw.call(sid, "s/2", "connect_transport",
                  {"type": "consumer", "dtlsParameters": recv.dtls_parameters()}, pb)
    await recv.connect()
    await gw.call(sid, "s/2", "resume_audio", None, pb)
    send.data_channel(1).send(b"\x03" + bytes(20))
    recv.data_channel(stream)
    for i in range(60):
        send.send_rtp(42, 111, i, i * 960, b"\x55" * 60)
        await asyncio.sleep(0.002)
    assert await wait_for(lambda: recv.rtp_received >= 55 and recv.messages, timeout=5)
    # A third player joins: B and A get pushes for... only what is new to them.
    [[_, created_c]] = await gw.call(sid, "s/3", "create_transport", {"type": "consumer"},
                                     {"uri": 5})
    await gw.call(sid, "s/3", "set_rtp_capabilities", CAPS, {"uri": 5})
    await gw.call(sid, "s/3", "create_transport", {"type": "producer"}, {"uri": 5})
    await gw.call(sid, "s/3", "produce", opus_rtp_parameters(43), {"uri": 5})
    assert await wait_for(lambda: len(gw.pushes) >= 1)
    assert [p.session for p in gw.pushes] == ["s/2"]
    assert gw.pushes[0].messages[0].subject == "create_consumer"
    assert gw.pushes[0].messages[0].data["playerId"] == 5
    # Errors come back as RemoteError.
    with pytest.raises(RemoteError):
        await gw.call(sid, "s/9", "produce", opus_rtp_parameters(1), {})
    # Load is published; the metrics show forwarding.
    assert await wait_for(lambda: "hubbub_media_rtp_forwarded_total" in proc.metrics()
                          and _metric(proc, "hubbub_media_rtp_forwarded_total") >= 55, 5)
    [rec] = await gw.registry.processes("shard")
    assert rec.info["load"]["media_sessions"] == 4 and rec.info["load"]["media_spaces"] == 1
    # The admin view lists sessions (token required).
    token = (Path(proc.env["HUBBUB_DATA"]) / "admin_token").read_text().strip()
    url = f"http://127.0.0.1:{proc.ops_port}/media"
    assert http_get(url)[0] == 401
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        view = json.loads(resp.read())
    assert view["sessions"] == 4 and view["listed"]["s/2"]["consumers"] == 2
    assert view["listed"]["s/1"]["send"] == "connected" and view["listed"]["s/1"]["producer"]
    # SIGTERM: every session's gateway hears media.lost; presence drops the media entry.
    proc.proc.send_signal(signal.SIGTERM)
    assert await wait_for(lambda: len(gw.lost) >= 4, timeout=8)
    assert {p.session for p in gw.lost} == {"s/1", "s/2", "s/3", "s/9"}
    await send.close()
    await recv.close()


def _metric(proc: HubbubProcess, name: str) -> float:
    total = 0.0
    for line in proc.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
