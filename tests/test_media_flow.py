"""The shard's SFU in-process: create/connect/produce/consume with aiortc-based peers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hubbub.contracts.media import MediaCall
from hubbub.errors import ContractError, RemoteProtocolError
from hubbub.net import listen_socket
from hubbub.wire.webrtc import params
from loadtest.media_peer import MediaPeer, opus_rtp_parameters, wait_for
from shards.media.metrics import Counts
from shards.media.mux import BURST_LIMIT, UdpMux
from shards.media.router import MediaRouter
from shards.media.stack import new_certificate


DEVICE_CAPS = {
    "codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
                "clockRate": 48000, "channels": 2, "parameters": {}, "rtcpFeedback": []}],
    "headerExtensions": [{"kind": "audio", "uri": params.AUDIO_LEVEL_URI, "preferredId": 10,
                          "direction": "sendrecv"}],
}
CERT = new_certificate()


@contextlib.asynccontextmanager
async def open_router(host: str, announced: str) -> AsyncIterator[MediaRouter]:
    """A router on its own UDP mux and ICE-TCP listener bound to ``host``, torn down after."""
    counts = Counts()
    mux = UdpMux(counts)
    await mux.open(host, 0)
    tcp = await asyncio.get_running_loop().create_server(
        mux.tcp_protocol, sock=listen_socket(host, 0, reuse_port=False))
    r = MediaRouter(mux, CERT, counts, announced, tcp.sockets[0].getsockname()[1])
    try:
        yield r
    finally:
        for sid in list(r.sessions):
            r.close_session(sid)
        assert mux.sock is not None
        mux.sock.close()
        tcp.close()
        for conn in list(mux.tcp.values()):
            conn.close()
        await asyncio.sleep(0.05)
    # nothing routable is left behind
    assert not mux.by_ufrag and not mux.by_addr and not r.transports and not r.spaces


@pytest.fixture
async def router() -> AsyncIterator[MediaRouter]:
    async with open_router("127.0.0.1", "127.0.0.1") as r:
        yield r


def call(r: MediaRouter, session: str, op: str, data: Any = None,
         spaces: dict[str, int] | None = None) -> list[list[Any]]:
    return r.call(MediaCall(session, "gw-1", op, data,
                            spaces if spaces is not None else {"space-a": hash(session) % 200}))


def subjects(msgs: list[list[Any]]) -> list[str]:
    return [m[0] for m in msgs]


async def publisher(r: MediaRouter, sid: str, spaces: dict[str, int],
                    tcp: bool = False) -> MediaPeer:
    [[subject, created]] = call(r, sid, "create_transport", {"type": "producer"}, spaces)
    assert subject == "transport_created" and created["type"] == "producer"
    peer = MediaPeer(created["options"], CERT, tcp=tcp)
    assert call(r, sid, "connect_transport", {"type": "producer",
                                              "dtlsParameters": peer.dtls_parameters()},
                spaces) == []
    await peer.connect()
    return peer


async def subscriber(r: MediaRouter, sid: str, spaces: dict[str, int],
                     tcp: bool = False) -> tuple[MediaPeer, list[list[Any]]]:
    msgs = call(r, sid, "create_transport", {"type": "consumer"}, spaces)
    created = msgs[0][1]
    msgs += call(r, sid, "set_rtp_capabilities", DEVICE_CAPS, spaces)
    peer = MediaPeer(created["options"], CERT, tcp=tcp)
    call(r, sid, "connect_transport", {"type": "consumer",
                                       "dtlsParameters": peer.dtls_parameters()}, spaces)
    await peer.connect()
    return peer, msgs


async def test_transport_options_have_mediasoup_shape(router: MediaRouter) -> None:
    [[subject, caps]] = call(router, "a", "get_router_rtp_capabilities")
    assert subject == "router_rtp_capabilities"
    opus = caps["codecs"][0]
    assert (opus["mimeType"], opus["clockRate"], opus["channels"]) == ("audio/opus", 48000, 2)
    assert opus["parameters"]["useinbandfec"] == 1
    [[_, created]] = call(router, "a", "create_transport", {"type": "consumer"})
    opts = created["options"]
    assert set(opts) == {"id", "iceParameters", "iceCandidates", "dtlsParameters",
                         "sctpParameters"}
    assert opts["iceParameters"]["iceLite"] is True
    cand, tcp = opts["iceCandidates"]
    assert (cand["protocol"], cand["address"], cand["port"], cand["type"]) == (
        "udp", "127.0.0.1", router.mux.port, "host")
    assert (tcp["protocol"], tcp["tcpType"]) == ("tcp", "passive")
    assert tcp["priority"] < cand["priority"]
    assert opts["dtlsParameters"]["role"] == "auto"
    assert opts["dtlsParameters"]["fingerprints"][-1]["algorithm"] == "sha-256"
    sctp = opts["sctpParameters"]
    assert (sctp["port"], sctp["OS"], sctp["MIS"]) == (5000, 1024, 1024)


@pytest.mark.parametrize("tcp_pub,tcp_sub", [(False, False), (True, False), (False, True)],
                         ids=["udp", "tcp-publisher", "tcp-subscriber"])
async def test_voice_and_location_records_flow(router: MediaRouter, tcp_pub: bool,
                                               tcp_sub: bool) -> None:
    spaces_a, spaces_b = {"space-a": 7}, {"space-a": 9}
    send = await publisher(router, "A", spaces_a, tcp_pub)
    assert subjects(call(router, "A", "produce", opus_rtp_parameters(1111),
                         spaces_a)) == ["producer_id"]
    [[subj, dp_id]] = call(router, "A", "produce_data",
                           {"streamId": 0, "ordered": False, "maxRetransmits": 0}, spaces_a)
    assert subj == "data_producer_id" and isinstance(dp_id, str)

    recv, msgs = await subscriber(router, "B", spaces_b, tcp_sub)
    by_subject = {m[0]: m[1] for m in msgs}
    consumer = by_subject["create_consumer"]
    assert consumer["playerId"] == 7
    rtp = consumer["rtpParameters"]
    assert rtp["codecs"][0]["payloadType"] == 100
    assert rtp["headerExtensions"][0]["id"] == 10
    out_ssrc = rtp["encodings"][0]["ssrc"]
    data_consumer = by_subject["create_data_consumer"]
    assert data_consumer["dataProducerId"] == dp_id and data_consumer["playerId"] == 7
    sctp = data_consumer["sctpStreamParameters"]
    assert sctp["ordered"] is False and sctp["maxRetransmits"] == 0

    # Consumers start paused: nothing is forwarded before resume_audio.
    send.send_rtp(1111, 111, 500, 9000, b"\x01" * 80)
    await asyncio.sleep(0.1)
    assert recv.rtp_received == 0
    assert call(router, "B", "resume_audio", None, spaces_b) == []

    seqs = [1000 + i for i in range(30) if i != 10]  # one packet lost on the way in
    for seq in seqs:
        send.send_rtp(1111, 111, seq, 48000 + 960 * (seq - 1000), bytes([seq & 255]) * 80)
    assert await wait_for(lambda: recv.rtp_received >= len(seqs))
    got = recv.received
    assert {g[0] for g in got} == {out_ssrc} and {g[1] for g in got} == {100}
    base_seq, base_ts = got[0][2], got[0][3]
    for (_, _, seq, ts, payload), src in zip(got, seqs, strict=True):
        assert (seq - base_seq) & 0xFFFF == src - 1000  # the gap is preserved
        assert (ts - base_ts) & 0xFFFFFFFF == 960 * (src - 1000)
        assert payload == bytes([src & 255]) * 80

    # Location records go through the data channel untouched.
    ch = send.data_channel(0)
    rch = recv.data_channel(sctp["streamId"])
    record = bytes([7]) + bytes(range(20))
    for _ in range(5):
        ch.send(record)
        await asyncio.sleep(0.02)
    assert await wait_for(lambda: len(recv.messages) >= 3)
    assert all(m == (sctp["streamId"], record) for m in recv.messages)

    # RTCP: the publisher gets receiver reports, the subscriber sender reports.
    for t in router.transports.values():
        t.send_reports(asyncio.get_running_loop().time())
    assert await wait_for(lambda: send.rtcp_received >= 1 and recv.rtcp_received >= 1)

    # Leaving the space closes B's consumers of A.
    assert call(router, "B", "leave", {"uri": "space-a"}, {}) == []
    assert router.sessions["B"].consumers == {} and router.sessions["B"].data_consumers == {}
    assert router.sessions["A"].producer is not None
    assert router.sessions["A"].producer.consumers == []
    # ... and resets the data consumer's SCTP stream, which closes the client's channel.
    assert await wait_for(lambda: rch.readyState == "closed")
    await send.close()
    await recv.close()


async def test_late_producer_is_pushed_to_present_subscribers(router: MediaRouter) -> None:
    sp = {"s": 1}
    call(router, "sub", "create_transport", {"type": "consumer"}, {"s": 2})
    assert call(router, "sub", "set_rtp_capabilities", DEVICE_CAPS, {"s": 2}) == []
    call(router, "pub", "create_transport", {"type": "producer"}, sp)
    call(router, "pub", "produce", opus_rtp_parameters(5), sp)
    call(router, "pub", "produce_data", {"streamId": 3}, sp)
    pushes = router.take_pushes()
    assert [(gw, sid) for gw, sid, _ in pushes] == [("gw-1", "sub")]
    assert subjects(pushes[0][2]) == ["create_consumer", "create_data_consumer"]
    # No duplicates on a second refresh, and the publisher never consumes itself.
    call(router, "sub", "set_rtp_capabilities", DEVICE_CAPS, {"s": 2})
    call(router, "pub", "create_transport", {"type": "consumer"}, sp)
    assert call(router, "pub", "set_rtp_capabilities", DEVICE_CAPS, sp) == []
    assert router.take_pushes() == []
    assert len(router.sessions["sub"].consumers) == 1
    # The publisher's socket goes away: its consumers disappear everywhere.
    call(router, "pub", "close")
    assert router.sessions["sub"].consumers == {}
    assert "pub" not in router.sessions and router.spaces == {"s": {"sub"}}


async def test_bad_requests_are_refused(router: MediaRouter) -> None:
    bad: list[tuple[str, Any]] = [
        ("produce", opus_rtp_parameters(1)),           # no producer transport yet
        ("connect_transport", {"type": "producer"}),   # no transport
        ("create_transport", {"type": "sideways"}),
        ("set_rtp_capabilities", {"codecs": [{"mimeType": "audio/PCMU", "clockRate": 8000}]}),
        ("set_rtp_capabilities", "nope"),
    ]
    for op, data in bad:
        with pytest.raises(RemoteProtocolError):
            call(router, "x", op, data)
    with pytest.raises(RemoteProtocolError):
        router.call(MediaCall("x", "g", "explode", None, {}))
    with pytest.raises(RemoteProtocolError):
        router.call(MediaCall("", "g", "close", None, {}))
    with pytest.raises(ContractError):
        MediaCall.from_array(["not", "a", "map"])
    call(router, "x", "create_transport", {"type": "producer"})
    rtp: dict[str, Any]
    for rtp in ({"codecs": []}, {"codecs": [{"mimeType": "video/VP8", "payloadType": 96}]},
                {"codecs": [{"mimeType": "audio/opus", "payloadType": 300}]},
                {"codecs": [{"mimeType": "audio/opus", "payloadType": 111}],
                 "encodings": [{"ssrc": -4}]}):
        with pytest.raises(RemoteProtocolError):
            call(router, "x", "produce", rtp)
    for sctp in ({}, {"streamId": 5000}, {"streamId": 1, "maxRetransmits": 0,
                                          "maxPacketLifeTime": 10}):
        with pytest.raises(RemoteProtocolError):
            call(router, "x", "produce_data", sctp)
    with pytest.raises(RemoteProtocolError):
        call(router, "x", "connect_transport", {"type": "producer", "dtlsParameters": {
            "role": "client", "fingerprints": []}})


async def test_hostile_datagrams_are_dropped(router: MediaRouter) -> None:
    [[_, created]] = call(router, "h", "create_transport", {"type": "producer"})
    ufrag = created["options"]["iceParameters"]["usernameFragment"]
    from hubbub.wire.webrtc import stun

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    target = ("127.0.0.1", router.mux.port)
    junk = [b"", b"\x00", b"\x16" * 50, b"\x80" * 40, bytes(range(256)) * 5,
            stun.binding_request(b"x" * 12, f"{ufrag}:zz", "wrong-password"),
            stun.binding_request(b"y" * 12, "unknown:zz", "pw")]
    for pkt in junk:
        s.sendto(pkt, target)
    await asyncio.sleep(0.1)
    with pytest.raises(BlockingIOError):
        s.recv(2048)  # nothing answered
    s.close()
    t = router.sessions["h"].send
    assert t is not None and t.addr is None and not router.mux.by_addr
    assert router.counts.unroutable >= 3 and router.counts.stun_bad >= 1


async def test_unauthenticated_ice_tcp_is_closed(router: MediaRouter) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router.tcp_port)
    writer.write(b"\x00\x05hello\x00\x03\x80\x00\x00" + b"\xff\xff" + b"x" * 100)
    await writer.drain()
    assert await wait_for(lambda: len(router.mux.tcp) == 1)
    router.mux.sweep(asyncio.get_running_loop().time() + 3600)
    try:
        assert await reader.read() == b""  # closed by the shard, nothing answered
    except ConnectionResetError:
        pass  # closed with our junk still unread
    assert await wait_for(lambda: not router.mux.tcp)
    writer.close()


async def test_flooding_publisher_is_rate_limited(router: MediaRouter) -> None:
    sp = {"s": 1}
    send = await publisher(router, "P", sp)
    call(router, "P", "produce", opus_rtp_parameters(9), sp)
    recv, _ = await subscriber(router, "S", {"s": 2})
    call(router, "S", "resume_audio", None, {"s": 2})
    recv.keep = False
    for seq in range(2000):  # 2000 packets at once: far above any Opus rate
        send.send_rtp(9, 111, seq, seq * 960, b"x" * 20)
        if seq % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0.3)
    assert 300 <= recv.rtp_received <= 500
    assert router.counts.drop_rate >= 1400
    await send.close()
    await recv.close()


async def test_fuzzed_calls_only_raise_protocol_errors(router: MediaRouter) -> None:
    import random

    from hubbub.errors import HubbubError

    rng = random.Random(11)
    ops = sorted(["get_router_rtp_capabilities", "create_transport", "connect_transport",
                  "set_rtp_capabilities", "produce", "produce_data", "resume_audio", "join",
                  "leave", "close", "bogus"])

    def junk(depth: int = 0) -> Any:
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, -1, 1, 5, 127, 128, 2**32, 2**70, 3.5])
        if kind == 3:
            return rng.choice(["", "producer", "consumer", "audio/opus", "x" * 300, "client"])
        if kind == 4:
            return [junk(depth + 1) for _ in range(rng.randrange(3))]
        if kind == 5:
            return b"\x00\xff"
        keys = ["type", "dtlsParameters", "codecs", "encodings", "headerExtensions", "streamId",
                "maxRetransmits", "ordered", "uri", "playerId", "fingerprints", "role",
                "mimeType", "payloadType", "ssrc", "rtpParameters", "clockRate"]
        return {rng.choice(keys): junk(depth + 1) for _ in range(rng.randrange(5))}

    for i in range(3000):
        # As off the wire: the contract refuses what is not a call at all.
        payload = [1, f"f{i % 7}", "g", rng.choice(ops), junk(), rng.choice([{}, {"s": 1}, junk()])]
        try:
            router.call(MediaCall.from_array(payload))
        except HubbubError:
            pass
    router.take_pushes()
    assert len(router.sessions) <= 7 and len(router.transports) <= 14


async def test_only_the_loudest_voices_are_forwarded(router: MediaRouter) -> None:
    router.max_speakers = 1
    loud = await publisher(router, "loud", {"room": 1})
    quiet = await publisher(router, "quiet", {"room": 2})
    call(router, "loud", "produce", opus_rtp_parameters(1), {"room": 1})
    call(router, "quiet", "produce", opus_rtp_parameters(2), {"room": 2})
    recv, msgs = await subscriber(router, "ear", {"room": 3})
    call(router, "ear", "resume_audio", None, {"room": 3})
    ssrc_of = {m[1]["producerId"]: m[1]["rtpParameters"]["encodings"][0]["ssrc"]
               for m in msgs if m[0] == "create_consumer"}
    loud_ssrc = ssrc_of[router.sessions["loud"].producer.id]  # type: ignore[union-attr]

    async def talk(first: int) -> None:
        for seq in range(first, first + 20):
            loud.send_rtp(1, 111, seq, seq * 960, b"L" * 40, level=0x10)    # -16 dBov
            quiet.send_rtp(2, 111, seq, seq * 960, b"Q" * 40, level=0x70)   # -112 dBov
            await asyncio.sleep(0.002)

    await talk(0)  # before any selection every voice is forwarded
    assert await wait_for(lambda: len({r[0] for r in recv.received}) == 2)
    router.select_speakers()
    recv.received.clear()
    await talk(100)
    await asyncio.sleep(0.2)
    assert recv.received and {r[0] for r in recv.received} == {loud_ssrc}
    assert router.counts.drop_inactive >= 15
    # the loud one goes silent (sends nothing): the quiet one is heard again
    router.select_speakers()  # the interval of talk(100): loud still wins
    recv.received.clear()
    for seq in range(200, 210):
        quiet.send_rtp(2, 111, seq, seq * 960, b"Q" * 40, level=0x70)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.1)
    assert not recv.received
    router.select_speakers()  # loud was silent during this interval
    for seq in range(300, 310):
        quiet.send_rtp(2, 111, seq, seq * 960, b"Q" * 40, level=0x70)
    assert await wait_for(lambda: len(recv.received) >= 8)
    assert {r[0] for r in recv.received} == {ssrc_of[router.sessions["quiet"].producer.id]}  # type: ignore[union-attr]
    for p in (loud, quiet, recv):
        await p.close()


async def test_idle_sessions_without_live_transports_are_reaped(router: MediaRouter) -> None:
    send = await publisher(router, "live", {"s": 1})
    router.call(MediaCall("ghost", "g", "create_transport", {"type": "consumer"}, {"s": 2}),
                now=0.0)
    later = asyncio.get_running_loop().time() + 1000
    router.sessions["live"].last_call = 0.0
    assert [s.id for s in router.reap_idle(later)] == ["ghost"]  # "live" answers consent checks
    assert set(router.sessions) == {"live"}
    await send.close()


async def test_lost_path_is_replaced_by_the_next_valid_check(router: MediaRouter) -> None:
    from hubbub.wire.webrtc import stun

    [[_, created]] = call(router, "p", "create_transport", {"type": "producer"})
    ice = created["options"]["iceParameters"]
    t = router.sessions["p"].send
    assert t is not None
    user, pw = f"{ice['usernameFragment']}:c", ice["password"]
    tcp_key = ("tcp", "127.0.0.1", 40001)
    t.on_stun(stun.binding_request(b"a" * 12, user, pw, use_candidate=True),
              ("127.0.0.1", 40001), 1.0, tcp_key)
    assert t.addr == tcp_key and router.mux.by_addr[tcp_key] is t
    router.mux.by_addr.pop(tcp_key)
    t.forget_addr(tcp_key)  # the ICE-TCP connection closed
    assert t.addr is None
    udp = ("127.0.0.1", 40002)
    t.on_stun(stun.binding_request(b"b" * 12, user, pw), udp, 2.0, udp)
    assert t.addr == udp and router.mux.by_addr[udp] is t


@pytest.mark.parametrize("announced", ["127.0.0.1", "::1"])
async def test_dual_stack_sockets_carry_media_for_both_families(announced: str) -> None:
    """The shard's default ``::`` sockets serve IPv4 peers (as mapped addresses) and IPv6."""
    async with open_router("::", announced) as r:
        spaces = {"space-a": 3}
        for use_tcp in (False, True):
            a, b = f"A{use_tcp}", f"B{use_tcp}"
            send = await publisher(r, a, spaces, use_tcp)
            ssrc = 2222 + use_tcp
            call(r, a, "produce", opus_rtp_parameters(ssrc), spaces)
            recv, _ = await subscriber(r, b, spaces, use_tcp)
            call(r, b, "resume_audio", None, spaces)
            for seq in range(20):
                send.send_rtp(ssrc, 111, seq, 960 * seq, b"\x02" * 60)
            assert await wait_for(lambda peer=recv: peer.rtp_received >= 15), (announced, use_tcp)
            await send.close()
            await recv.close()


async def test_forwarded_packets_of_one_iteration_go_out_together() -> None:
    counts = Counts()
    mux = UdpMux(counts)
    await mux.open("127.0.0.1", 0)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    try:
        key = sink.getsockname()
        send, addr = mux.sender_for(key)
        for i in range(50):
            send(bytes([i]) * 40, addr)
        with pytest.raises(BlockingIOError):
            sink.recv(100)  # held until the loop turns
        await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(sink.recv(100))
        assert got == [bytes([i]) * 40 for i in range(50)]

        # A burst is bounded: past the limit it is sent at once.
        for _ in range(BURST_LIMIT):
            send(b"x" * 20, addr)
        assert mux._burst == [] and mux._burst_handle is None
        with contextlib.suppress(BlockingIOError):
            while sink.recv(100):
                pass

        # What the kernel refuses is a counted drop, not a forwarded packet.
        counts.rtp_out = 3
        send(b"y" * 20, ("127.0.0.1", 0))  # port 0: refused by sendto
        mux.flush()
        assert counts.drop_send == 1 and counts.rtp_out == 2
    finally:
        sink.close()
        assert mux.sock is not None
        mux.sock.close()
