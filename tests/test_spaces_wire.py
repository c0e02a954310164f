"""Sans-I/O tests of the Wired protocol package and the gateway↔gateway channel codec."""

from __future__ import annotations

import msgpack
import orjson
import pytest
from support import ROOT, io_imports

from hubbub.contracts import Contract, ContractError
from hubbub.contracts.spaces import (
    SPACE_CHANNEL,
    KickPlayer,
    SpaceFrame,
    SpaceJoined,
    SpaceLeft,
    SpacePositions,
    SpaceProbe,
)
from hubbub.wire.wired import outbound, positions
from hubbub.wire.wired.admission import Admission
from hubbub.wire.wired.events import CloseConnection, LocationRecord, ResumeAudio
from hubbub.wire.wired.inbound import (
    INBOUND_SUBJECTS,
    MEDIA_SUBJECTS,
    Limits,
    Message,
    Rejected,
    parse_frame,
)
from hubbub.wire.wired.strikes import Strikes


LIM = Limits()


def frame(subject: object, data: object = None) -> str:
    return orjson.dumps({"subject": subject, "data": data}).decode()


VALID = {
    "join": "https://example.org/space.glb",
    "leave": "https://example.org/space.glb",
    "chat": "hi",
    "set_grounded": False,
    "set_name": "ann",
    "set_avatar": None,
    "set_address": "0xabc",
    "get_router_rtp_capabilities": None,
    "create_transport": {"type": "producer"},
    "connect_transport": {"type": "consumer", "dtlsParameters": {
        "role": "client", "fingerprints": [{"algorithm": "sha-256", "value": "AB:CD"}]}},
    "set_rtp_capabilities": {"codecs": [{"mimeType": "audio/opus"}], "headerExtensions": []},
    "produce": {"mid": "0", "codecs": [{"mimeType": "audio/opus", "payloadType": 100}],
                "headerExtensions": [], "encodings": [{"ssrc": 1}], "rtcp": {}},
    "produce_data": {"streamId": 0, "ordered": False, "maxRetransmits": 0},
    "resume_audio": None,
    "subscribe_positions": True,
}


def test_all_fourteen_subjects_and_the_extension_are_known() -> None:
    assert set(VALID) == INBOUND_SUBJECTS
    assert len(INBOUND_SUBJECTS - {"subscribe_positions"}) == 14
    assert len(outbound.OUTBOUND_SUBJECTS) == 14
    assert MEDIA_SUBJECTS < INBOUND_SUBJECTS


@pytest.mark.parametrize("subject", sorted(VALID))
def test_valid_frames_parse(subject: str) -> None:
    got = parse_frame(frame(subject, VALID[subject]), LIM)
    assert got == Message(subject, VALID[subject])


def test_absent_data_is_null_for_null_subjects() -> None:
    assert parse_frame('{"subject":"resume_audio"}', LIM) == Message("resume_audio", None)


@pytest.mark.parametrize("text,code", [
    ("not json", "malformed"),
    ("[1,2]", "malformed"),
    ('"join"', "malformed"),
    ('{"data":"x"}', "malformed"),
    ('{"subject":5,"data":"x"}', "malformed"),
    ("[" * 100000, "malformed"),
    (b"\xff\xfe", "malformed"),
    ('{"subject":"teleport","data":1}', "unknown_subject"),
])
def test_malformed_and_unknown(text: str | bytes, code: str) -> None:
    got = parse_frame(text, LIM)
    assert isinstance(got, Rejected) and got.code == code


def test_unknown_subject_name_is_truncated_in_the_message() -> None:
    got = parse_frame(frame("x" * 5000, 1), LIM)
    assert isinstance(got, Rejected) and len(got.message) < 200


@pytest.mark.parametrize("subject,data", [
    ("join", None), ("join", 5), ("leave", ["a"]),
    ("chat", None), ("set_grounded", "yes"), ("set_name", 3), ("set_avatar", {}),
    ("create_transport", {"type": "both"}), ("create_transport", "producer"),
    ("connect_transport", {"type": "producer"}),
    ("connect_transport", {"type": "producer", "dtlsParameters": {"fingerprints": []}}),
    ("connect_transport", {"type": "producer", "dtlsParameters": {
        "role": "boss", "fingerprints": [{"algorithm": "a", "value": "b"}]}}),
    ("connect_transport", {"type": "producer", "dtlsParameters": {"fingerprints": [1]}}),
    ("set_rtp_capabilities", []), ("set_rtp_capabilities", {"codecs": "opus"}),
    ("produce", {"codecs": None}), ("produce", {"codecs": [], "mid": 3}),
    ("produce_data", {"ordered": False}), ("produce_data", {"streamId": True}),
    ("produce_data", {"streamId": 1, "maxRetransmits": -1}),
    ("produce_data", {"streamId": 1, "ordered": "no"}),
    ("subscribe_positions", None),
])
def test_invalid_data(subject: str, data: object) -> None:
    got = parse_frame(frame(subject, data), LIM)
    assert isinstance(got, Rejected) and got.code == "invalid_data" and got.subject == subject


@pytest.mark.parametrize("subject,size", [
    ("join", 2049), ("leave", 2049), ("chat", 16385), ("set_name", 129), ("set_address", 129),
    ("set_avatar", 2049),
])
def test_oversized_fields(subject: str, size: int) -> None:
    assert isinstance(parse_frame(frame(subject, "a" * (size - 1)), LIM), Message)
    got = parse_frame(frame(subject, "a" * size), LIM)
    assert isinstance(got, Rejected) and got.code == "too_large" and got.subject == subject


def test_oversized_media_payload() -> None:
    caps = {"codecs": [{"mimeType": "audio/opus", "pad": "x" * 20000}]}
    got = parse_frame(frame("set_rtp_capabilities", caps), LIM)
    assert isinstance(got, Rejected) and got.code == "too_large"


def test_outbound_shapes_are_exact() -> None:
    assert outbound.join_success("https://example.org/space.glb", 173) == (
        b'{"subject":"join_success","data":{"uri":"https://example.org/space.glb",'
        b'"playerId":173}}')
    assert outbound.player_joined(4, "ann", None, None, before_you=True) == (
        b'{"subject":"player_joined","data":{"playerId":4,"name":"ann","avatar":null,'
        b'"address":null,"beforeYou":true}}')
    assert b"beforeYou" not in outbound.player_joined(4, None, None, None)
    assert outbound.player_chat(173, "hi", 1681650000000) == (
        b'{"subject":"player_chat","data":{"playerId":173,"text":"hi",'
        b'"timestamp":1681650000000}}')
    assert outbound.producer_id("p1") == b'{"subject":"producer_id","data":"p1"}'
    assert outbound.data_producer_id("d1") == b'{"subject":"data_producer_id","data":"d1"}'
    assert orjson.loads(outbound.player_left(3)) == {"subject": "player_left",
                                                     "data": {"playerId": 3}}
    assert orjson.loads(outbound.player_grounded(3, False))["data"] == {"playerId": 3,
                                                                        "grounded": False}
    assert orjson.loads(outbound.player_name(3, None))["data"] == {"playerId": 3, "name": None}
    assert orjson.loads(outbound.player_avatar(3, "a"))["data"] == {"playerId": 3, "avatar": "a"}
    assert orjson.loads(outbound.player_address(3, "x"))["data"] == {"playerId": 3,
                                                                     "address": "x"}
    assert orjson.loads(outbound.error("space_full", "full", "join")) == {
        "subject": "error", "data": {"code": "space_full", "message": "full", "subject": "join"}}


def test_location_record_codec() -> None:
    loc = positions.Location(7, (1.5, -2.25, 21000.0), (0.0, 0.7071, 0.0, 0.7071))
    rec = positions.encode_record(loc)
    assert len(rec) == positions.RECORD_SIZE == 21
    assert rec[0] == 7
    assert int.from_bytes(rec[1:5], "little", signed=True) == 150000
    back = positions.decode_record(rec)
    assert back is not None and back.player_id == 7 and back.position == (1.5, -2.25, 21000.0)
    assert positions.decode_record(rec[:20]) is None
    # values beyond the Int32 range are clamped, not wrapped
    far = positions.encode_record(positions.Location(1, (1e9, 0, 0), (4.0, 0, 0, 1)))
    assert int.from_bytes(far[1:5], "little", signed=True) == 2**31 - 1
    assert int.from_bytes(far[13:15], "little", signed=True) == 2**15 - 1


def test_stamp_and_batch() -> None:
    rec = bytes(range(21))
    stamped = positions.stamp(rec, 200)
    assert stamped is not None and stamped[0] == 200 and stamped[1:] == rec[1:]
    assert positions.stamp(rec + b"x", 1) is None
    assert positions.stamp(rec, 256) is None
    batch = positions.encode_batch([stamped, rec])
    assert batch[0] == positions.BATCH_VERSION and len(batch) == 43
    assert positions.decode_batch(batch) == [stamped, rec]
    assert positions.decode_batch(b"") is None
    assert positions.decode_batch(b"\x02" + rec) is None
    assert positions.decode_batch(batch[:-1]) is None
    assert positions.decode_batch(b"\x01" + rec * 257) is None


def test_strikes() -> None:
    s = Strikes(limit=3, window=10)
    assert not any(s.hit(t) for t in (0.0, 1.0, 2.0))
    assert s.hit(3.0)
    s2 = Strikes(limit=3, window=10)
    assert not any(s2.hit(t) for t in (0.0, 11.0, 22.0, 33.0, 44.0))  # spread out: fine
    assert s2.should_notify(0.0) and not s2.should_notify(0.5) and s2.should_notify(1.0)


@pytest.mark.parametrize("msg", [
    SpaceFrame(b'{"a":1}', exclude="g/1"),
    SpaceFrame(b"x"),
    SpaceJoined(5, "g/2", b"j"),
    SpaceLeft(5, b"l"),
    SpacePositions("g", bytes(42)),
    SpaceProbe("g", b"nonce"),
])
def test_channel_roundtrip(msg: Contract) -> None:
    assert SPACE_CHANNEL.decode(SPACE_CHANNEL.encode(msg)) == msg


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x91\x09", b"\x92\x00", b"\x93\x01\x01\x01", b"\x80", b"\xff" * 10,
    SPACE_CHANNEL.encode(KickPlayer("s")),  # not a channel message
    msgpack.packb(["spaces.frame", [2, b"x", ""]]),  # a version this process does not read
])
def test_channel_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ContractError):
        SPACE_CHANNEL.decode(data)


def test_wire_package_is_sans_io() -> None:
    for path in (ROOT / "hubbub" / "wire" / "wired").glob("*.py"):
        assert not io_imports(path), path.name


# ------------------------------------------------------------------ connection (admission)
def events(conn: Admission, *messages: str | bytes, now: float = 0.0) -> list[object]:
    for m in messages:
        conn.receive(m, now)
    return list(conn.events_received())


def test_connection_yields_messages_records_and_errors() -> None:
    conn = Admission(LIM, rate=100, burst=100)
    got = events(conn, frame("chat", "hi"), bytes(21), b"short", "nope")
    assert got == [Message("chat", "hi"), LocationRecord(bytes(21)),
                   Rejected("invalid_data", "a location record is 21 bytes, got 5", None),
                   Rejected("malformed", "frame is not valid JSON", None)]


def test_connection_rate_limit_notifies_once_a_second_then_closes() -> None:
    conn = Admission(LIM, rate=1, burst=2, strike_limit=5)
    got = events(conn, *(frame("chat", "x") for _ in range(5)))
    assert got[:2] == [Message("chat", "x")] * 2
    assert got[2:] == [Rejected("rate_limited", "too many messages; slow down")]
    got = events(conn, *(frame("chat", "x") for _ in range(5)))
    assert got == [CloseConnection(1008, "rate limit exceeded")]
    assert conn.closed and events(conn, frame("chat", "late")) == []


def test_connection_closes_after_repeated_invalid_frames() -> None:
    conn = Admission(LIM, rate=1000, burst=1000, strike_limit=3)
    got = events(conn, "a", "b", "c", "d")
    assert [type(e).__name__ for e in got] == ["Rejected"] * 4 + ["CloseConnection"]
    conn2 = Admission(LIM, rate=1000, burst=1000, strike_limit=3)
    conn2.reject("not_joined", "join first", None, 0.0)
    assert conn2.events_received() == [Rejected("not_joined", "join first", None)]


def test_resume_audio_bursts_are_coalesced_with_a_trailing_one() -> None:
    conn = Admission(LIM, rate=1, burst=1, resume_gap=0.1)
    resume = '{"subject":"resume_audio","data":null}'
    assert events(conn, resume, resume, resume, now=5.0) == [ResumeAudio()]
    assert conn.get_timer() == pytest.approx(5.1)
    assert events(conn, resume, now=5.05) == []  # still one trailing call pending
    conn.handle_timer(5.09)
    assert conn.events_received() == []
    conn.handle_timer(5.1)
    assert conn.events_received() == [ResumeAudio()] and conn.get_timer() is None
    # another spelling takes the normal path (rate-limited) and is coalesced all the same
    assert events(conn, '{"data":null,"subject":"resume_audio"}', now=6.0) == [ResumeAudio()]
    # bursts never cost tokens or strikes
    assert events(conn, *([resume] * 500), now=7.0) == [ResumeAudio()]
    assert not conn.closed
