"""Sans-I/O pieces of the media plane: STUN, ICE-lite, RTP rewrite, RTCP, parameters."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from aioice import stun as aioice_stun
from support import ROOT, io_imports

from hubbub.wire.webrtc import ice, params, rtcp, rtp, stun


TXID = bytes(range(12))


def test_no_io_imports_in_wire_webrtc() -> None:
    for path in (ROOT / "hubbub" / "wire" / "webrtc").glob("*.py"):
        assert not io_imports(path), path.name


# ------------------------------------------------------------------ STUN
def test_binding_request_roundtrip_and_integrity() -> None:
    raw = stun.binding_request(TXID, "srv:cli", "secret", use_candidate=True)
    msg = stun.parse(raw)
    assert msg.type == stun.BINDING_REQUEST and msg.txid == TXID
    assert msg.username == "srv:cli" and stun.ATTR_USE_CANDIDATE in msg.attrs
    assert msg.check_integrity("secret") and not msg.check_integrity("other")
    assert stun.peek_username(raw) == "srv:cli"


def test_our_messages_verify_with_aioice() -> None:
    """An independent implementation accepts our integrity and fingerprint."""
    resp = stun.binding_success(TXID, ("192.0.2.7", 40000), "pw")
    parsed = aioice_stun.parse_message(resp)
    assert parsed.check_message_integrity(b"pw")
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.7", 40000)
    req = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST,
                              transaction_id=TXID)
    req.attributes["USERNAME"] = "srv:cli"
    req.attributes["PRIORITY"] = 1
    req.attributes["USE-CANDIDATE"] = None
    req.add_message_integrity(b"pw")
    req.add_fingerprint()
    msg = stun.parse(bytes(req))
    assert msg.check_integrity("pw") and msg.username == "srv:cli"


def test_xor_address_ipv6() -> None:
    resp = stun.parse(stun.binding_success(TXID, ("2001:db8::5", 1234), "pw"))
    assert stun.unpack_xor_address(resp.attrs[stun.ATTR_XOR_MAPPED_ADDRESS], TXID) == (
        "2001:db8::5", 1234)
    mapped = stun.parse(stun.binding_success(TXID, ("::ffff:192.0.2.1", 99), "pw"))
    assert stun.unpack_xor_address(mapped.attrs[stun.ATTR_XOR_MAPPED_ADDRESS], TXID) == (
        "192.0.2.1", 99)


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1],                                   # truncated
    lambda b: b[:2] + b"\x7f\xff" + b[4:],              # length lies
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),              # fingerprint wrong
    lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:],      # no magic cookie
    lambda b: b[:20] + b"\x00\x06\xff\xff" + b[24:],    # attribute overruns
])
def test_malformed_stun_is_rejected(mutate: object) -> None:
    raw = stun.binding_request(TXID, "a:b", "pw")
    with pytest.raises(stun.StunError):
        stun.parse(mutate(raw))  # type: ignore[operator]


def test_stun_fuzz_never_crashes() -> None:
    rng = random.Random(5)
    base = stun.binding_request(TXID, "a:b", "pw")
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            stun.parse(bytes(data))
        except stun.StunError:
            pass
        stun.peek_username(bytes(data))


# --------------------------------------------------------------- ICE-lite
def test_ice_lite_selects_nominated_address_and_expires() -> None:
    agent = ice.IceLite("srv", "pw", consent_timeout=30, max_tuples=2)
    a, b, c = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)
    assert agent.receive_stun(stun.binding_request(TXID, "srv:x", "bad"), a, 0) is None
    assert agent.receive_stun(stun.binding_request(TXID, "other:x", "pw"), a, 0) is None
    assert agent.events_received() == [] and agent.rejected == 2
    reply = agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw"), a, 1.0)
    assert reply is not None and stun.parse(reply).check_integrity("pw")
    assert agent.events_received() == [ice.TupleAdded(a), ice.IceSelected(a)]
    # a non-nominating check from b does not move the selection; a nominating one does
    agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw"), b, 2.0)
    assert agent.selected == a and agent.events_received() == [ice.TupleAdded(b)]
    agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw", use_candidate=True), b, 3.0)
    assert agent.selected == b and agent.events_received() == [ice.IceSelected(b)]
    # the tuple table is capped (oldest non-selected goes)
    agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw"), c, 4.0)
    assert agent.events_received() == [ice.TupleRemoved(a), ice.TupleAdded(c)]
    assert agent.get_timer() == 34.0
    agent.handle_timer(33.9)
    assert agent.state is ice.IceState.CONNECTED
    agent.handle_timer(34.0)
    # mypy keeps the narrowing above across the call
    assert agent.state is ice.IceState.DISCONNECTED  # type: ignore[comparison-overlap]
    # c (last heard at 4.0) expired; the selected tuple b stays
    assert agent.events_received() == [ice.TupleRemoved(c), ice.IceDisconnected()]
    assert list(agent.tuples) == [b]
    agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw"), b, 40.0)
    assert agent.state is ice.IceState.CONNECTED
    agent.close()
    assert {type(e) for e in agent.events_received()} >= {ice.TupleRemoved}
    assert agent.receive_stun(stun.binding_request(TXID, "srv:x", "pw"), a, 41) is None


# -------------------------------------------------------------------- RTP
def packet(seq: int, ts: int, ssrc: int = 0xAABBCCDD, level: int | None = 0x85,
           level_id: int = 1, two_byte: bool = False, csrc: int = 0) -> bytes:
    b0 = 0x80 | csrc | (0x10 if level is not None else 0)
    out = struct.pack("!BBHII", b0, 0x80 | 111, seq, ts, ssrc) + b"\x00\x00\x00\x07" * csrc
    if level is not None:
        if two_byte:
            out += struct.pack("!HH", 0x1000, 1) + bytes((level_id, 1, level, 0))
        else:
            # mid element (id 4, "0") then audio level, padded to a word boundary
            out += struct.pack("!HH", 0xBEDE, 2) + bytes((0x40, 0x30, level_id << 4, level,
                                                          0, 0, 0, 0))
    return out + b"OPUS" * 20


def test_read_rtp_finds_audio_level_in_both_extension_forms() -> None:
    for two_byte in (False, True):
        info = rtp.read_rtp(packet(7, 9, two_byte=two_byte, csrc=1), audio_level_id=1)
        assert (info.seq, info.timestamp, info.ssrc, info.payload_type) == (7, 9, 0xAABBCCDD, 111)
        assert info.marker and info.audio_level == 0x85
    assert rtp.read_rtp(packet(7, 9, level=None), 1).audio_level == -1
    for bad in (b"\x80" * 5, b"\x40" + b"\x00" * 20, packet(1, 1)[:14]):
        with pytest.raises(rtp.RtpError):
            rtp.read_rtp(bad, 1)


def test_rewrite_keeps_gaps_and_maps_ids() -> None:
    out = rtp.OutboundStream(ssrc=0x01020304, payload_type=100, audio_level_id=10,
                             rng=random.Random(1))
    seqs = [65530, 65531, 65533, 65535, 0, 3]  # gaps and a wrap
    written = []
    for seq in seqs:
        data = packet(seq, seq * 960)
        written.append(out.rewrite(data, rtp.read_rtp(data, 1), 0.0))
    first = rtp.read_rtp(written[0], 10)
    for raw, seq in zip(written, seqs, strict=True):
        info = rtp.read_rtp(raw, 10)
        assert info.ssrc == 0x01020304 and info.payload_type == 100 and info.marker
        assert info.audio_level == 0x85
        assert (info.seq - first.seq) & 0xFFFF == (seq - seqs[0]) & 0xFFFF
        assert raw[info.payload_offset:] == b"OPUS" * 20
    assert out.packets == len(seqs) and out.octets == 80 * len(seqs)
    plain = rtp.OutboundStream(5, 100, audio_level_id=0)
    data = packet(1, 1)
    raw = plain.rewrite(data, rtp.read_rtp(data, 1), 0.0)
    assert raw[0] == 0x80 and len(raw) == 12 + 80


# ------------------------------------------------------------------- RTCP
def test_receive_stats_and_reports() -> None:
    stats = rtcp.ReceiveStats()
    for i, seq in enumerate([10, 11, 13, 14]):  # 12 lost
        stats.update(seq, seq * 960, 100.0 + i * 0.02)
    stats.on_sender_report(rtcp.ntp_time(99.0), 100.0)
    rr = rtcp.receiver_report(1, [(0xAABB, stats)], 101.0, "cname")
    b0, pt, words, sender, ssrc, lost_word, ext_max, _jitter, lsr, dlsr = struct.unpack_from(
        "!BBHIIIIIII", rr)
    assert (b0 & 31, pt, sender, ssrc) == (1, 201, 1, 0xAABB)
    assert lost_word >> 24 == 256 // 5 and lost_word & 0xFFFFFF == 1 and ext_max == 14
    assert lsr == (rtcp.ntp_time(99.0) >> 16) & 0xFFFFFFFF and dlsr == 65536
    assert rr[4 * (words + 1) + 1] == 202  # SDES follows
    # the next report only covers the new interval
    stats.update(15, 15 * 960, 102.0)
    again = rtcp.receiver_report(1, [(0xAABB, stats)], 102.0, "c")
    assert struct.unpack_from("!I", again, 12)[0] >> 24 == 0
    # wrap of the sequence space counts a cycle
    wrap = rtcp.ReceiveStats()
    for seq in (65534, 65535, 0, 1):
        wrap.update(seq, 0, 0.0)
    assert wrap.extended_max == 65536 + 1


def test_sender_report_roundtrip() -> None:
    out = rtp.OutboundStream(77, 100)
    data = packet(1, 480)
    out.rewrite(data, rtp.read_rtp(data, 1), 50.0)
    sr = rtcp.sender_report(out, 51.0, "me")
    [info] = rtcp.sender_infos(sr)
    assert info.ssrc == 77 and info.ntp == rtcp.ntp_time(51.0)
    assert info.rtp_timestamp == (out.last_ts + 48000) & 0xFFFFFFFF
    assert struct.unpack_from("!II", sr, 20) == (1, 80)
    assert rtcp.sender_infos(b"\x80\xc8\xff\xff" + b"\x00" * 10) == []
    assert rtcp.sender_infos(zlib.compress(b"x" * 100)) == []


# ------------------------------------------------------------- parameters
def test_parameters_shapes() -> None:
    spec = params.parse_producer({"codecs": [{"mimeType": "audio/OPUS", "payloadType": 111,
                                              "parameters": {"useinbandfec": 1, "x": [1]}}],
                                  "headerExtensions": [{"uri": params.AUDIO_LEVEL_URI, "id": 3}],
                                  "encodings": [{"ssrc": 99}], "rtcp": {"cname": "abc"}})
    assert (spec.ssrc, spec.payload_type, spec.audio_level_id, spec.cname) == (99, 111, 3, "abc")
    assert spec.codec_parameters == {"useinbandfec": 1}
    caps = params.subscriber_caps({"codecs": [{"mimeType": "audio/opus", "clockRate": 48000,
                                               "preferredPayloadType": 100}],
                                   "headerExtensions": []})
    assert caps is not None and caps.audio_level_id == 0
    rtp_params = params.consumer_rtp_parameters(caps, spec, 1234, "0", "abc")
    assert rtp_params["encodings"] == [{"ssrc": 1234}] and rtp_params["headerExtensions"] == []
    assert rtp_params["mid"] == "0" and rtp_params["rtcp"]["cname"] == "abc"
    dp = params.parse_data_producer({"streamId": 4, "ordered": False, "maxRetransmits": 0,
                                     "label": "l" * 1000})
    assert len(dp.label) == params.MAX_LABEL
    assert params.data_consumer_parameters(dp, 9)["streamId"] == 9
    assert params.parse_data_producer({"streamId": 1}).ordered is True


def test_rfc4571_framing() -> None:
    from hubbub.wire.webrtc.framing import FramingError, Rfc4571Decoder, frame

    stream = frame(b"abc") + frame(b"") + frame(b"x" * 300)
    dec = Rfc4571Decoder()
    out = []
    for i in range(0, len(stream), 7):  # arbitrary TCP segmentation
        out += dec.feed(stream[i:i + 7])
    assert out == [b"abc", b"x" * 300] and dec.pending == 0
    assert dec.feed(b"\xff\xff" + b"y" * 10) == [] and dec.pending == 12
    with pytest.raises(FramingError):
        frame(b"z" * 70000)
