"""Conformance of the spaces host with the Wired host protocol 0.3.0, from the protocol alone.

One cluster per module (two gateways on their own ports, one media shard, real Redis); each test
uses its own space URIs. The client is ``conformance_wired.WiredPeer`` (plain JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance_wired import WiredPeer
from support import Cluster, RedisServer, free_port, free_port_block, new_prefix, shard_env


NULLABLE_STR = (str, type(None))


class Hosts:
    def __init__(self, cluster: Cluster, ports: list[int]) -> None:
        self.cluster = cluster
        self.ports = ports

    def url(self, i: int = 0, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.ports[i]}{path}"

    def http(self, path: str, i: int = 0) -> tuple[int, bytes, dict[str, str]]:
        """A raw GET (the path is sent exactly as given, no encoding)."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=3)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()


@pytest.fixture(scope="module")
def hosts(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    cluster = Cluster(redis_srv.url, new_prefix(), Path(tmp_path_factory.mktemp("wired")))
    base = shard_env(MEDIASOUP_LISTEN_IP="127.0.0.1")
    try:
        cluster.start("shard", env=base)
        ports = []
        for _ in range(2):
            port = free_port()
            cluster.start("gateway", env={**base, "SPACES_PORT": str(port),
                                          "RENDEZVOUS_PORT": str(free_port_block(4) + 1)})
            ports.append(port)
        yield Hosts(cluster, ports)
    finally:
        cluster.stop_all()


@pytest.fixture
async def open_peer(hosts: Hosts) -> AsyncIterator[Any]:
    peers: list[WiredPeer] = []

    async def make(i: int = 0, path: str = "/") -> WiredPeer:
        p = await WiredPeer.open(hosts.url(i, path))
        peers.append(p)
        return p

    yield make
    for p in peers:
        await p.close()


_n = 0


def space(tag: str) -> str:
    global _n
    _n += 1
    return f"https://example.org/{tag}-{_n}-{time.monotonic_ns()}.glb"


def check_player_joined(data: Any, before_you: bool) -> None:
    keys = {"playerId", "name", "avatar", "address"} | ({"beforeYou"} if before_you else set())
    assert set(data) == keys, data
    assert isinstance(data["playerId"], int) and 0 <= data["playerId"] <= 255
    for k in ("name", "avatar", "address"):
        assert isinstance(data[k], NULLABLE_STR)
    if before_you:
        assert data["beforeYou"] is True


# ------------------------------------------------------------------ transport level
async def test_any_path_deflate_and_16k_frames(hosts: Hosts, open_peer: Any) -> None:
    for path in ("/", "/anything/at/all", "/x?y=1&z=%20"):
        p = await open_peer(0, path)
        ext = p.ws.response.headers.get("Sec-WebSocket-Extensions", "") if p.ws.response else ""
        assert "permessage-deflate" in ext
        await p.send("get_router_rtp_capabilities", None)
        await p.wait_for("router_rtp_capabilities")
    p = await open_peer()
    uri = space("big")
    pid = await p.join(uri)
    text = "x" * (16 * 1024 - 64)
    frame = '{"subject":"chat","data":"' + text + '"}'
    assert len(frame) <= 16 * 1024
    await p.send_raw(frame)
    data = await p.expect("player_chat")
    assert data["playerId"] == pid and data["text"] == text
    # A padded 16 KiB frame is still one ordinary message.
    padded = '{"subject":"set_name","data":"pad"}' + " " * (16 * 1024 - 40)
    await p.send_raw(padded)
    assert await p.expect("player_name") == {"playerId": pid, "name": "pad"}
    assert not p.closed.done()


# ------------------------------------------------------------------ join and catch-up
async def test_join_shapes_and_catch_up(hosts: Hosts, open_peer: Any) -> None:
    uri = space("join")
    a = await open_peer(0)
    await a.send("set_name", "ann")
    await a.send("set_avatar", "https://example.org/ann.vrm")
    await a.send("join", uri)
    ok = await a.expect("join_success")
    assert set(ok) == {"uri", "playerId"} and ok["uri"] == uri
    pa = ok["playerId"]
    assert isinstance(pa, int) and 0 <= pa <= 255
    await a.quiet(0.2)  # no player_joined about itself

    b = await open_peer(1)  # another gateway
    await b.send("set_address", "0xabc")
    await b.send("join", uri)
    # Exactly: one player_joined(beforeYou) per present player, then join_success.
    joined = await b.expect("player_joined")
    check_player_joined(joined, before_you=True)
    assert joined == {"playerId": pa, "name": "ann", "avatar": "https://example.org/ann.vrm",
                      "address": None, "beforeYou": True}
    ok_b = await b.expect("join_success")
    pb = ok_b["playerId"]
    assert ok_b == {"uri": uri, "playerId": pb} and pb != pa
    await b.quiet(0.2)

    # The present player learns of the newcomer once, without beforeYou.
    got = await a.expect("player_joined")
    check_player_joined(got, before_you=False)
    assert got == {"playerId": pb, "name": None, "avatar": None, "address": "0xabc"}

    # Re-joining is a no-op: nothing to anyone.
    await b.send("join", uri)
    await b.quiet(0.3)
    await a.quiet(0.0)

    c = await open_peer(0)
    await c.send("join", uri)
    first = [await c.expect("player_joined"), await c.expect("player_joined")]
    assert {d["playerId"] for d in first} == {pa, pb}
    for d in first:
        check_player_joined(d, before_you=True)
    pc = (await c.expect("join_success"))["playerId"]
    assert len({pa, pb, pc}) == 3
    status, body, _ = hosts.http("/player-count/" + uri)
    assert (status, body) == (200, b"3")


async def test_several_spaces_per_socket(hosts: Hosts, open_peer: Any) -> None:
    u1, u2 = space("multi1"), space("multi2")
    a = await open_peer()
    p1 = await a.join(u1)
    p2 = await a.join(u2)
    b = await open_peer(1)
    await b.join(u2)
    b.skip_all()
    await a.wait_for("player_joined")
    a.skip_all()
    await a.send("chat", "both")
    chats = [await a.expect("player_chat"), await a.expect("player_chat")]
    assert sorted(c["playerId"] for c in chats) == sorted([p1, p2])
    only = await b.expect("player_chat")
    assert only["playerId"] == p2 and only["text"] == "both"
    await b.quiet(0.2)
    # Leaving one space keeps the other.
    await a.send("leave", u1)
    await a.quiet(0.2)
    await a.send("set_grounded", False)
    assert await a.expect("player_grounded") == {"playerId": p2, "grounded": False}
    assert await b.expect("player_grounded") == {"playerId": p2, "grounded": False}


# ------------------------------------------------------------------ broadcasts
async def test_broadcast_shapes_and_echo(hosts: Hosts, open_peer: Any) -> None:
    uri = space("bcast")
    a, b = await open_peer(0), await open_peer(1)
    pa = await a.join(uri)
    pb = await b.join(uri)
    b.skip_all()
    await a.wait_for("player_joined")
    before = int(time.time() * 1000)
    await a.send("chat", "hi")
    after = int(time.time() * 1000)
    for p in (a, b):
        msg = await p.expect("player_chat")
        assert set(msg) == {"playerId", "text", "timestamp"}
        assert msg["playerId"] == pa and msg["text"] == "hi"
        assert isinstance(msg["timestamp"], int)
        assert before - 2000 <= msg["timestamp"] <= after + 2000  # ms since epoch
    cases: list[tuple[str, Any, str, str]] = [
        ("set_grounded", False, "player_grounded", "grounded"),
        ("set_grounded", True, "player_grounded", "grounded"),
        ("set_name", "bob", "player_name", "name"),
        ("set_name", None, "player_name", "name"),
        ("set_avatar", "https://example.org/a.vrm", "player_avatar", "avatar"),
        ("set_avatar", None, "player_avatar", "avatar"),
        ("set_address", "0x1234", "player_address", "address"),
        ("set_address", None, "player_address", "address"),
    ]
    for subject, value, out, key in cases:
        await b.send(subject, value)
        for p in (b, a):  # echoed to the sender too
            got = await p.expect(out)
            assert got == {"playerId": pb, key: value}, (subject, got)
    # Names set while joined show up in later joiners' catch-up.
    await b.send("set_name", "bea")
    await b.expect("player_name")
    a.skip_all()
    c = await open_peer(0)
    await c.send("join", uri)
    seen = {d["playerId"]: d for d in [await c.expect("player_joined"),
                                       await c.expect("player_joined")]}
    assert seen[pb]["name"] == "bea" and "grounded" not in seen[pb]


async def test_leave_and_disconnect_send_player_left(hosts: Hosts, open_peer: Any) -> None:
    uri = space("left")
    a, b, c = await open_peer(0), await open_peer(1), await open_peer(0)
    await a.join(uri)
    pb = await b.join(uri)
    pc = await c.join(uri)
    await asyncio.sleep(0.2)
    a.skip_all()
    b.skip_all()
    await b.send("leave", uri)
    assert await a.expect("player_left") == {"playerId": pb}
    await c.wait_for("player_left")
    await b.quiet(0.2)  # the leaver hears nothing more from the space
    await a.send("chat", "after")
    await b.quiet(0.3)
    a.skip_all()
    await c.close()
    assert await a.expect("player_left") == {"playerId": pc}
    status, body, _ = hosts.http("/player-count/" + uri)
    assert body == b"1"


# ------------------------------------------------------------------ HTTP
@pytest.mark.parametrize("uri", [
    "https://example.org/count.glb",
    "https://example.org/count.glb?version=2&x=y",
    "https://example.org/a%20b%2Fc.glb",
    "https://example.org/my space.glb",
    "https://example.org/q.glb?name=a b&pct=100%25",
    "ipfs://bafy/space.glb",
    "https://example.org/ümlaut.glb",
    "plain-name",
])
async def test_player_count_raw_uris(hosts: Hosts, open_peer: Any, uri: str) -> None:
    uri = uri.replace("count", f"count{time.monotonic_ns()}") if "count" in uri else \
        uri + str(time.monotonic_ns())
    raw = "/player-count/" + urllib.parse.quote(uri, safe=":/?&=%")
    a, b = await open_peer(0), await open_peer(1)
    await a.join(uri)
    await b.join(uri)
    for i in (0, 1):  # cluster-wide on every gateway
        status, body, _ = hosts.http(raw, i)
        assert status == 200 and body == b"2", (uri, body)
        assert int(body.decode()) == 2
    await b.close()
    deadline = time.monotonic() + 3
    while hosts.http(raw)[1] != b"1" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert hosts.http(raw)[1] == b"1"


def test_player_count_unknown_and_empty(hosts: Hosts) -> None:
    for path in ("/player-count/https://example.org/nobody.glb", "/player-count/",
                 "/player-count/a%20b?c=d"):
        status, body, headers = hosts.http(path)
        assert (status, body) == (200, b"0")
        # One response per connection, announced (pooling clients must not reuse it).
        assert headers.get("connection", "").lower() == "close"


# ------------------------------------------------------------------ errors and limits
async def test_errors_are_explicit_and_keep_the_socket(hosts: Hosts, open_peer: Any) -> None:
    p = await open_peer()
    cases: list[tuple[str, str, str | None]] = [
        ("not json", "malformed", None),
        ('["subject","join"]', "malformed", None),
        ('{"subject":"fly","data":1}', "unknown_subject", None),
        ('{"subject":"set_grounded","data":"yes"}', "invalid_data", "set_grounded"),
        ('{"subject":"join","data":5}', "invalid_data", "join"),
        ('{"subject":"create_transport","data":{"type":"sideways"}}', "invalid_data",
         "create_transport"),
        ('{"subject":"produce_data","data":{"ordered":false}}', "invalid_data", "produce_data"),
        ('{"subject":"leave","data":"https://example.org/never.glb"}', "not_joined", "leave"),
        ('{"subject":"set_name","data":"' + "n" * 5000 + '"}', "too_large", "set_name"),
    ]
    for frame, code, subject in cases:
        await p.send_raw(frame)
        err = await p.expect("error")
        assert set(err) == {"code", "message", "subject"}, err
        assert err["code"] == code, (frame[:40], err)
        assert err["subject"] == subject, (frame[:40], err)
        assert isinstance(err["message"], str) and err["message"]
    pid = await p.join(space("after-errors"))
    assert 0 <= pid <= 255
    assert not p.closed.done()


async def test_continued_abuse_closes_with_1008(hosts: Hosts, open_peer: Any) -> None:
    p = await open_peer()
    for _ in range(60):
        await p.send_raw("not json")
    code, _reason = await asyncio.wait_for(p.closed, 5)
    assert code == 1008
    with pytest.raises(AssertionError, match="socket closed"):
        await p.wait_for("never", timeout=5)


async def test_space_full_error(hosts: Hosts, open_peer: Any) -> None:
    uri = space("full")
    peers = [await WiredPeer.open(hosts.url(i % 2)) for i in range(256)]
    try:
        ids = await asyncio.gather(*(p.join(uri, timeout=20) for p in peers))
        assert sorted(ids) == list(range(256))
        extra = await open_peer()
        await extra.send("join", uri)
        err = await extra.expect("error")
        assert err["code"] == "space_full" and err["subject"] == "join"
        await extra.quiet(0.2)
    finally:
        await asyncio.gather(*(p.close() for p in peers))


# ------------------------------------------------------------------ batched positions
def record(pid: int, xyz: tuple[float, float, float], q: tuple[float, ...]) -> bytes:
    return struct.pack("<B3i4h", pid, *(round(v * 100000) for v in xyz),
                       *(round(v * 10000) for v in q))


async def test_binary_position_batches(hosts: Hosts, open_peer: Any) -> None:
    uri = space("pos")
    a, b = await open_peer(0), await open_peer(1)
    pa = await a.join(uri)
    pb = await b.join(uri)
    await b.send("subscribe_positions", True)
    await asyncio.sleep(0.1)
    wrong = (pa + 1) % 256
    await a.send_raw(record(wrong, (1.5, -2.25, 3.0), (0.0, 0.0, 0.0, 1.0)))
    deadline = time.monotonic() + 3
    while True:
        batch = await b.next_binary(timeout=max(0.05, deadline - time.monotonic()))
        assert batch[0] == 1 and (len(batch) - 1) % 21 == 0
        recs = {batch[i]: batch[i:i + 21] for i in range(1, len(batch), 21)}
        if pa in recs:
            break
    rec = recs[pa]
    x, y, z, qx, qy, qz, qw = struct.unpack("<3i4h", rec[1:])
    assert (x, y, z) == (150000, -225000, 300000) and (qx, qy, qz, qw) == (0, 0, 0, 10000)
    # The sender opted in by sending and gets its own record too.
    own = await a.next_binary(timeout=2)
    assert own[0] == 1
    assert pb not in recs  # b never sent a position, so it has no record
    # A wrong-size record is an explicit error, not a crash.
    await a.send_raw(b"\x00" * 20)
    err = await a.wait_for("error")
    assert err["code"] == "invalid_data"
    await b.send("subscribe_positions", False)
    await asyncio.sleep(0.2)
    b.skip_all()
    await a.send_raw(record(pa, (0, 0, 0), (0, 0, 0, 1)))
    await b.quiet(0.4, text_only=False)


# ------------------------------------------------------------------ the reference media flow
CLIENT_CAPS = {
    "codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 111,
                "clockRate": 48000, "channels": 2,
                "parameters": {"minptime": 10, "useinbandfec": 1},
                "rtcpFeedback": [{"type": "transport-cc", "parameter": ""}]}],
    "headerExtensions": [
        {"kind": "audio", "uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "preferredId": 1,
         "preferredEncrypt": False, "direction": "sendrecv"},
        {"kind": "audio", "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
         "preferredId": 10, "preferredEncrypt": False, "direction": "sendrecv"},
    ],
}
FINGERPRINT = {"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}


def rtp_parameters(ssrc: int) -> dict[str, Any]:
    return {"mid": "0",
            "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000,
                        "channels": 2, "parameters": {"minptime": 10, "useinbandfec": 1},
                        "rtcpFeedback": []}],
            "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                                  "id": 10, "encrypt": False, "parameters": {}}],
            "encodings": [{"ssrc": ssrc, "dtx": False}],
            "rtcp": {"cname": "conformance", "reducedSize": True}}


def check_options(options: Any) -> None:
    assert set(options) >= {"id", "iceParameters", "iceCandidates", "dtlsParameters",
                            "sctpParameters"}
    assert isinstance(options["id"], str) and options["id"]
    ice = options["iceParameters"]
    assert isinstance(ice["usernameFragment"], str) and isinstance(ice["password"], str)
    assert ice["iceLite"] is True
    cands = options["iceCandidates"]
    assert cands and {c["protocol"] for c in cands} == {"udp", "tcp"}
    for c in cands:
        assert isinstance(c["foundation"], str) and isinstance(c["priority"], int)
        assert isinstance(c["ip"], str) and isinstance(c["port"], int) and c["type"] == "host"
        if "address" in c:
            assert c["address"] == c["ip"]
        if c["protocol"] == "tcp":
            assert c["tcpType"] == "passive"
        else:
            assert "tcpType" not in c
    dtls = options["dtlsParameters"]
    assert dtls["role"] in ("auto", "client", "server")
    assert dtls["fingerprints"] and all(
        isinstance(f["algorithm"], str) and isinstance(f["value"], str)
        for f in dtls["fingerprints"])
    sctp = options["sctpParameters"]
    assert sctp["port"] == 5000 and sctp["OS"] == 1024 and sctp["MIS"] == 1024
    assert sctp["maxMessageSize"] == 262144


async def bootstrap(p: WiredPeer, uri: str, ssrc: int) -> dict[str, Any]:
    """A.4 step by step, as the reference client does it; returns what it learned."""
    await p.send("get_router_rtp_capabilities", None)
    await p.send("join", uri)
    caps = await p.expect("router_rtp_capabilities")
    codecs = caps["codecs"]
    assert [c["mimeType"].lower() for c in codecs] == ["audio/opus"]
    assert codecs[0]["clockRate"] == 48000 and codecs[0]["channels"] == 2
    assert codecs[0]["kind"] == "audio" and isinstance(codecs[0]["preferredPayloadType"], int)
    assert isinstance(caps.get("headerExtensions", []), list)
    info: dict[str, Any] = {}
    # join does not wait for WebRTC: its catch-up and join_success come next.
    while True:
        f = await p.next_text()
        if f.subject == "join_success":
            info["playerId"] = f.data["playerId"]
            break
        assert f.subject == "player_joined", f.text
    await p.send("create_transport", {"type": "producer"})
    await p.send("create_transport", {"type": "consumer"})
    await p.send("set_rtp_capabilities", CLIENT_CAPS)
    for _ in range(2):
        created = await p.wait_for("transport_created")
        assert set(created) == {"type", "options"}
        check_options(created["options"])
        info[created["type"]] = created["options"]
    assert set(info) >= {"producer", "consumer"}
    await p.send("connect_transport", {"type": "producer", "dtlsParameters": {
        "role": "client", "fingerprints": [FINGERPRINT]}})
    await p.send("produce_data", {"streamId": 0, "ordered": False, "maxRetransmits": 0,
                                  "label": "", "protocol": ""})
    dp = await p.wait_for("data_producer_id")
    assert isinstance(dp, str) and dp
    info["dataProducerId"] = dp
    await p.send("produce", rtp_parameters(ssrc))
    prod = await p.wait_for("producer_id")
    assert isinstance(prod, str) and prod
    info["producerId"] = prod
    await p.send("connect_transport", {"type": "consumer", "dtlsParameters": {
        "role": "client", "fingerprints": [FINGERPRINT]}})
    return info


async def rtc_before_join(p: WiredPeer) -> None:
    """Capabilities, both transports and the client's capabilities, with no space joined."""
    await p.send("get_router_rtp_capabilities", None)
    await p.expect("router_rtp_capabilities")
    for kind in ("producer", "consumer"):
        await p.send("create_transport", {"type": kind})
        await p.expect("transport_created")
    await p.send("set_rtp_capabilities", CLIENT_CAPS)


async def test_reference_media_flow(hosts: Hosts, open_peer: Any) -> None:
    uri = space("media")
    a = await open_peer(0)
    ia = await bootstrap(a, uri, 1111)
    await a.quiet(0.3)  # connect_transport has no reply; nobody to consume yet
    b = await open_peer(1)
    ib = await bootstrap(b, uri, 2222)
    await asyncio.sleep(0.3)
    consumers = {}
    for subject in ("create_consumer", "create_data_consumer"):
        got_b = b.seen(subject)
        assert len(got_b) == 1, (subject, got_b)  # exactly one, for a's producer
        consumers[subject] = got_b[0]
    cc = consumers["create_consumer"]
    assert set(cc) == {"playerId", "consumerId", "producerId", "rtpParameters"}
    assert cc["playerId"] == ia["playerId"] and cc["producerId"] == ia["producerId"]
    assert isinstance(cc["consumerId"], str)
    rtp = cc["rtpParameters"]
    assert rtp["codecs"][0]["mimeType"].lower() == "audio/opus"
    assert rtp["codecs"][0]["payloadType"] == 111  # the receiver's preferred type
    assert isinstance(rtp["encodings"][0]["ssrc"], int) and "cname" in rtp["rtcp"]
    dc = consumers["create_data_consumer"]
    assert set(dc) == {"playerId", "consumerId", "dataProducerId", "sctpStreamParameters"}
    assert dc["playerId"] == ia["playerId"] and dc["dataProducerId"] == ia["dataProducerId"]
    sp = dc["sctpStreamParameters"]
    assert isinstance(sp["streamId"], int) and sp["ordered"] is False
    assert sp["maxRetransmits"] == 0
    # a learns about b's producers too (and never about its own).
    got: dict[str, Any] = {}
    for subject in ("create_consumer", "create_data_consumer"):
        got_a = a.seen(subject)
        assert len(got_a) == 1, (subject, got_a)
        got[subject] = got_a[0]
    b.skip_all()
    assert got["create_consumer"]["producerId"] == ib["producerId"]
    assert got["create_data_consumer"]["dataProducerId"] == ib["dataProducerId"]
    assert got["create_consumer"]["playerId"] == ib["playerId"]
    # resume_audio has no reply.
    await b.send("resume_audio", None)
    await b.quiet(0.3)


async def test_late_joiner_with_media_ready_gets_exact_sequence(hosts: Hosts,
                                                                open_peer: Any) -> None:
    uri = space("late")
    a = await open_peer(0)
    ia = await bootstrap(a, uri, 3333)
    c = await open_peer(1)
    ic = await bootstrap(c, uri, 4444)
    await asyncio.sleep(0.3)
    a.skip_all()
    c.skip_all()
    # b sets up all of WebRTC, producing included, before joining.
    b = await open_peer(1)
    await rtc_before_join(b)
    await b.send("produce_data", {"streamId": 0, "ordered": False, "maxRetransmits": 0})
    dp_b = await b.expect("data_producer_id")
    await b.send("produce", rtp_parameters(5555))
    p_b = await b.expect("producer_id")
    await b.quiet(0.3)
    await b.send("join", uri)
    # A.4: one player_joined(beforeYou) per present player, then the consumers of their
    # producers, then join_success.
    seq = [await b.next_text() for _ in range(7)]
    subjects = [f.subject for f in seq]
    assert subjects[:2] == ["player_joined", "player_joined"], subjects
    assert sorted(subjects[2:6]) == ["create_consumer", "create_consumer",
                                     "create_data_consumer", "create_data_consumer"], subjects
    assert subjects[6] == "join_success", subjects
    assert {f.data["playerId"] for f in seq[:2]} == {ia["playerId"], ic["playerId"]}
    assert all(f.data["beforeYou"] is True for f in seq[:2])
    assert {f.data["producerId"] for f in seq[2:6] if f.subject == "create_consumer"} == \
        {ia["producerId"], ic["producerId"]}
    assert {f.data["dataProducerId"] for f in seq[2:6] if f.subject == "create_data_consumer"} \
        == {ia["dataProducerId"], ic["dataProducerId"]}
    pb = seq[6].data["playerId"]
    await b.quiet(0.2)
    # Present players hear of b before they are asked to consume b.
    for p in (a, c):
        joined = await p.expect("player_joined")
        assert joined["playerId"] == pb and "beforeYou" not in joined
        rest = {(await p.next_text()).subject for _ in range(2)}
        assert rest == {"create_consumer", "create_data_consumer"}
        assert p.seen("create_consumer")[-1]["producerId"] == p_b
        assert p.seen("create_data_consumer")[-1]["dataProducerId"] == dp_b
    with contextlib.suppress(Exception):
        await a.close()
    assert await b.wait_for("player_left") == {"playerId": ia["playerId"]}


@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=15; server_max_window_bits=15",
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits=10; client_max_window_bits",
    "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
])
def test_deflate_offers_of_browsers_and_node(hosts: Hosts, offer: str) -> None:
    import base64
    import os
    import socket
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET /any HTTP/1.1\r\nHost: 127.0.0.1:{hosts.ports[0]}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Sec-WebSocket-Extensions: {offer}\r\nOrigin: https://thewired.space\r\n"
           "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Protocol: wired\r\n\r\n")
    with socket.create_connection(("127.0.0.1", hosts.ports[0]), timeout=3) as s:
        s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk
            head += chunk
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines[0]
    ext = [v for k, _, v in (ln.partition(": ") for ln in lines[1:])
           if k.lower() == "sec-websocket-extensions"]
    assert ext and ext[0].startswith("permessage-deflate"), (offer, ext)


async def test_any_string_is_a_space_and_spaces_per_socket(hosts: Hosts, open_peer: Any) -> None:
    a, b = await open_peer(0), await open_peer(1)
    pa = await a.join("")
    await b.join("")
    assert hosts.http("/player-count/")[1] == b"2"
    assert (await a.expect("player_joined"))["playerId"] != pa
    await a.send("leave", "")
    await b.send("leave", "")
    await a.quiet(0.2)
    assert hosts.http("/player-count/")[1] == b"0"
    # A socket may be in several spaces, up to the documented limit, then an explicit error.
    uris = [space("cap") for _ in range(9)]
    for u in uris[:8]:
        await a.join(u)
    await a.send("join", uris[8])
    err = await a.expect("error")
    assert err["code"] == "too_many_spaces" and err["subject"] == "join"


async def test_positions_in_the_space_named_by_byte0(hosts: Hosts, open_peer: Any) -> None:
    u1, u2 = space("pos1"), space("pos2")
    a, b = await open_peer(0), await open_peer(1)
    await a.join(u1)
    p2 = await a.join(u2)
    await b.join(u2)
    await b.send("subscribe_positions", True)
    await asyncio.sleep(0.1)
    await a.send_raw(record(p2, (7, 8, 9), (0, 0, 0, 1)))
    batch = await b.next_binary(timeout=2)
    recs = {batch[i]: batch[i:i + 21] for i in range(1, len(batch), 21)}
    assert p2 in recs and struct.unpack("<3i", recs[p2][1:13]) == (700000, 800000, 900000)
    # Nobody moves: no more batches.
    await asyncio.sleep(0.2)
    b.skip_all()
    await b.quiet(0.4, text_only=False)


async def test_profile_values_survive_the_catch_up(hosts: Hosts, open_peer: Any) -> None:
    uri = space("profile")
    a = await open_peer(0)
    await a.send("set_name", "")
    await a.send("set_avatar", "https://example.org/ü ñ/😀.vrm?x=\"q\"")
    pa = await a.join(uri)
    await a.send("set_address", "0x" + "f" * 40)
    assert (await a.expect("player_address"))["address"] == "0x" + "f" * 40
    await a.send("set_grounded", False)
    await a.expect("player_grounded")
    b = await open_peer(1)
    await b.send("join", uri)
    got = await b.expect("player_joined")
    assert got == {"playerId": pa, "name": "", "avatar": "https://example.org/ü ñ/😀.vrm?x=\"q\"",
                   "address": "0x" + "f" * 40, "beforeYou": True}
    await b.expect("join_success")
    # Chat text is relayed exactly (unicode, quotes, empty).
    for text in ("", "ünïcødé 😀 \"quoted\" \\ back", "line\nbreak"):
        await b.send("chat", text)
        assert (await b.expect("player_chat"))["text"] == text
        assert (await a.wait_for("player_chat"))["text"] == text


async def test_abrupt_disconnect_and_chat_outside_spaces(hosts: Hosts, open_peer: Any) -> None:
    uri = space("abrupt")
    a, b = await open_peer(0), await open_peer(1)
    await a.join(uri)
    pb = await b.join(uri)
    await a.wait_for("player_joined")
    b.ws.transport.abort()  # no close frame, just a reset
    assert await a.wait_for("player_left", timeout=5) == {"playerId": pb}
    # Messages that need a space are silently without effect outside one (as the original).
    c = await open_peer(0)
    await c.send("chat", "nobody hears")
    await c.send("set_name", "solo")
    await c.send("set_grounded", False)
    await c.quiet(0.3)
    await a.quiet(0.0)


async def test_webrtc_before_join_with_two_shards(cluster: Cluster) -> None:
    """A client that sets up WebRTC before joining still meets later players' media."""
    env = shard_env(2, 8, MEDIASOUP_LISTEN_IP="127.0.0.1")
    for _ in range(2):
        cluster.start("shard", env=env)
    port = free_port()
    cluster.start("gateway", env={**env, "SPACES_PORT": str(port),
                                  "RENDEZVOUS_PORT": str(free_port_block(4) + 1)})
    url = f"ws://127.0.0.1:{port}/"
    uri = space("early")
    a = await WiredPeer.open(url)
    b = await WiredPeer.open(url)
    try:
        await rtc_before_join(a)
        await a.send("produce", rtp_parameters(7777))
        pa_prod = await a.expect("producer_id")
        await asyncio.sleep(2.5)  # the shards publish their loads: a's shard is now busier
        await a.join(uri)
        ib = await bootstrap(b, uri, 8888)
        await asyncio.sleep(0.3)
        assert [c["producerId"] for c in b.seen("create_consumer")] == [pa_prod]
        assert [c["producerId"] for c in a.seen("create_consumer")] == [ib["producerId"]]
    finally:
        await a.close()
        await b.close()


async def test_simultaneous_joins_learn_everyone_exactly_once(hosts: Hosts) -> None:
    uri = space("storm")
    peers = [await WiredPeer.open(hosts.url(i % 2)) for i in range(24)]
    try:
        await asyncio.gather(*(p.send("join", uri) for p in peers))
        ids = [(await p.wait_for("join_success", timeout=10))["playerId"] for p in peers]
        assert len(set(ids)) == len(peers)
        await asyncio.sleep(0.5)
        for p, own in zip(peers, ids, strict=True):
            seen = [d["playerId"] for d in p.seen("player_joined")]
            assert sorted(seen) == sorted(i for i in ids if i != own), (own, seen)
        assert hosts.http("/player-count/" + uri)[1] == str(len(peers)).encode()
        await peers[0].close()
        for p in peers[1:]:
            assert await p.wait_for("player_left") == {"playerId": ids[0]}
    finally:
        await asyncio.gather(*(p.close() for p in peers))


def test_player_count_candidates() -> None:
    from gateway.spaces.http import count_candidates
    assert count_candidates("/player-count/https://x/s.glb") == ["https://x/s.glb"]
    assert count_candidates("/player-count/https://x/s.glb?v=2") == [
        "https://x/s.glb", "https://x/s.glb?v=2"]
    assert count_candidates("/player-count/a%20b?c=%C3%BC") == [
        "a%20b", "a b", "a%20b?c=%C3%BC", "a b?c=ü"]
    # What a URL parser encodes is undone, escapes the URI had are kept.
    assert count_candidates("/player-count/a%20b%25c%2f") == ["a%20b%25c%2f", "a b%25c%2f",
                                                              "a b%c/"]
    assert count_candidates("/player-count/") == [""]
    assert count_candidates("/player-count/%zz%") == ["%zz%"]
