"""Relay protocol pieces without sockets: first message, WebSocket codec, limits, tables, lists."""

from __future__ import annotations

import base64
import hashlib

import pytest
from support import ROOT, io_imports

from hubbub.errors import ContractError, FrameTooLarge, RemoteProtocolError
from hubbub.wire.relay.bandwidth import BYTES_PER_MBIT, PairStats, mbps_to_bytes, relay_bucket
from hubbub.wire.relay.first_message import (
    FIRST_MESSAGE_CAP,
    Refused,
    TcpFirstMessage,
    WsFirstMessage,
    check_hello,
    parse_hello,
)
from hubbub.wire.relay.reframe import Collect
from hubbub.wire.relay.waiting import TableFull, WaitingTable
from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import pb, serialize
from hubbub.wire.websocket import OP_BINARY, HandshakeError, WsDecoder, frame_header
from loadtest.bench_relay import WsClient, request_relay, request_relay_frame
from shards.relay.handoff import Transfer, handoff_address
from shards.relay.lists import IpLists, format_list, parse_list


SANS_IO = ["hubbub/wire/relay/first_message.py", "hubbub/wire/websocket.py",
           "hubbub/wire/relay/reframe.py", "shards/relay/budget.py", "hubbub/wire/relay/waiting.py",
           "hubbub/wire/relay/bandwidth.py", "shards/relay/lists.py", "hubbub/limits.py",
           "hubbub/ipaddr.py"]


@pytest.mark.parametrize("name", SANS_IO)
def test_sans_io_modules_import_no_io(name: str) -> None:
    assert not io_imports(ROOT / name)


# ------------------------------------------------------------------ TCP first message
def test_tcp_first_message_and_leftover() -> None:
    early = encode_frame(b"x" * 200_000) + b"\x01\x02partial"
    reader = TcpFirstMessage()
    hello = reader.feed(request_relay_frame("u-1", "k", "123") + early)
    assert hello is not None
    assert (hello.uuid, hello.licence_key, hello.peer_id) == ("u-1", "k", "123")
    assert hello.leftover == early


def test_tcp_first_message_byte_by_byte() -> None:
    data = request_relay_frame("abc") + b"tail"
    reader = TcpFirstMessage()
    got = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    hellos = [h for h in got if h is not None]
    assert hellos and hellos[0].uuid == "abc"
    assert got.index(hellos[0]) == len(request_relay_frame("abc")) - 1


def test_tcp_huge_header_refused_at_once() -> None:
    header = ((1 << 30) - 1 << 2 | 3).to_bytes(4, "little")
    with pytest.raises(Refused) as info:
        TcpFirstMessage().feed(header)
    assert info.value.reason == "too_large"


def test_tcp_first_frame_just_above_cap_refused() -> None:
    with pytest.raises(Refused) as info:
        TcpFirstMessage().feed(encode_frame(b"\0" * (FIRST_MESSAGE_CAP + 1))[:10])
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\xff\xff\xff\xff", "garbage"),
    (serialize(pb.RendezvousMessage(register_peer=pb.RegisterPeer(id="1"))), "wrong_message"),
    (b"", "wrong_message"),
])
def test_tcp_bad_first_frames(payload: bytes, reason: str) -> None:
    with pytest.raises(Refused) as info:
        TcpFirstMessage().feed(encode_frame(payload))
    assert info.value.reason == reason


def test_hello_checks() -> None:
    hello = parse_hello(request_relay("u", "good"), b"")
    check_hello(hello, "")
    check_hello(hello, "good")
    with pytest.raises(Refused, match="licence"):
        check_hello(hello, "other")
    with pytest.raises(Refused) as info:
        check_hello(parse_hello(request_relay(""), b""), "")
    assert info.value.reason == "no_uuid"


# ------------------------------------------------------------------ WebSocket
UPGRADE = (b"GET /ws/relay HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_ws_first_message() -> None:
    first = WsFirstMessage()
    out, hello = first.feed(UPGRADE[:20])
    assert (out, hello) == (b"", None)
    later = WsClient.frame(b"next message")
    out, hello = first.feed(UPGRADE[20:] + WsClient.frame(request_relay("w-1")) + later)
    assert out.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in out
    assert hello is not None and hello.uuid == "w-1"
    assert hello.leftover == later


def test_ws_ping_before_first_message_is_answered() -> None:
    out, hello = WsFirstMessage().feed(UPGRADE + WsClient.frame(b"hi", opcode=0x9))
    assert hello is None
    assert out.endswith(frame_header(0xA, 2) + b"hi")


# The answers of the websockets library's server protocol, as on every hubbub WebSocket port.
@pytest.mark.parametrize("request_,status", [
    (b"POST / HTTP/1.1\r\n\r\n", b"405"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), b"400"),
    (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), b"400"),
    (b"\x16\x03\x01\x00\xa5\r\n\r\n", b""),  # not HTTP at all: closed without an answer
])
def test_ws_bad_upgrades(request_: bytes, status: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        WsFirstMessage().feed(request_)
    if status:
        assert info.value.response.startswith(b"HTTP/1.1 " + status + b" ")
    else:
        assert info.value.response == b""


def test_ws_oversized_head() -> None:
    with pytest.raises(HandshakeError):
        WsFirstMessage().feed(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 9000)


def _decode_ws(data: bytes, max_message: int = 1 << 20) -> tuple[list[bytes], WsDecoder]:
    sink = Collect()
    dec = WsDecoder(sink, max_message)
    assert dec.feed(data) == len(data)
    return sink.messages, dec


def test_ws_decoder_fragments_text_and_control() -> None:
    data = (WsClient.frame(b"ab", 2, fin=False) + WsClient.frame(b"x", 9)
            + WsClient.frame(b"cd", 0) + WsClient.frame(b"text", 1) + WsClient.frame(b"", 2))
    messages, dec = _decode_ws(data)
    assert messages == [b"abcd", b""]
    assert dec.replies() == [frame_header(0xA, 1) + b"x"]
    dec.feed(WsClient.frame(b"\x03\xe8", 8))
    assert dec.closed and dec.replies() == [frame_header(8, 2) + b"\x03\xe8"]


def test_ws_decoder_rejects_hostile_frames() -> None:
    with pytest.raises(RemoteProtocolError):
        _decode_ws(bytes([0x82, 0x01]) + b"a")  # unmasked
    with pytest.raises(FrameTooLarge):
        _decode_ws(WsClient.frame(b"a" * 101)[:14], 100)
    with pytest.raises(FrameTooLarge):  # fragments add up
        _decode_ws(WsClient.frame(b"a" * 60, 2, fin=False) + WsClient.frame(b"a" * 60, 0), 100)
    with pytest.raises(RemoteProtocolError):
        _decode_ws(WsClient.frame(b"a", 0))  # continuation without start
    with pytest.raises(RemoteProtocolError):
        _decode_ws(bytes([0xC2, 0x80]) + b"\0\0\0\0")  # RSV1


def test_ws_frame_header_lengths() -> None:
    assert frame_header(OP_BINARY, 5) == b"\x82\x05"
    assert frame_header(OP_BINARY, 300) == b"\x82\x7e\x01\x2c"
    assert frame_header(OP_BINARY, 70000)[:2] == b"\x82\x7f"


def test_ws_accept_key_formula() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    assert base64.b64encode(digest) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ------------------------------------------------------------------ limits
def test_units_follow_hbbr() -> None:
    assert mbps_to_bytes(8) == 8 * 1024 * 1024 / 8 == 8 * BYTES_PER_MBIT
    assert mbps_to_bytes(0) == 0


def test_bucket_rate_and_debt() -> None:
    b = relay_bucket(100_000, 0.0)
    assert b.available(0.0) == b.burst
    b.consume(int(b.burst) + 50_000, 0.0)
    assert b.available(0.0) == -50_000
    assert b.wait_time(4096, 0.0) == pytest.approx((50_000 + 4096) / 100_000)
    assert b.available(1.0) == pytest.approx(min(b.burst, 50_000))
    assert relay_bucket(0, 0.0).available(5.0) == float("inf")


def test_downgrade_rule() -> None:
    s = PairStats(started=0.0)
    s.tick(100 * 1024 * 1024, 10.0)  # 80 Mbit/s average (binary Mbit)
    assert not s.should_downgrade(10.0, 128, 0.66, 1800)  # too young
    assert s.should_downgrade(10.0, 100, 0.66, 5)  # 80 > 66
    assert not s.should_downgrade(10.0, 128, 0.66, 5)  # 80 < 84.5
    assert not s.should_downgrade(10.0, 0, 0.66, 5)  # unlimited


# ------------------------------------------------------------------ pairing table
def test_waiting_table() -> None:
    t: WaitingTable[str] = WaitingTable(timeout=30, max_waiting=2)
    assert t.arrive("u1", "a", 0.0) is None
    assert t.arrive("u1", "b", 1.0) == "a"
    assert len(t) == 0
    assert t.arrive("u2", "c", 2.0) is None
    assert t.arrive("u3", "d", 3.0) is None
    with pytest.raises(TableFull):
        t.arrive("u4", "e", 4.0)
    assert t.expire(31.9) == []
    assert t.expire(32.0) == ["c"]
    assert t.discard("u3", "d") and not t.discard("u3", "d")
    assert t.next_deadline() is None


def test_waiting_table_limits_each_source() -> None:
    t: WaitingTable[str] = WaitingTable(timeout=30, max_per_source=2)
    assert t.arrive("u1", "a", 0.0, "1.1.1.1") is None
    assert t.arrive("u2", "b", 0.0, "1.1.1.1") is None
    with pytest.raises(TableFull):
        t.arrive("u3", "c", 0.0, "1.1.1.1")
    assert t.arrive("u3", "c", 0.0, "2.2.2.2") is None
    assert t.arrive("u1", "partner", 1.0, "1.1.1.1") == "a"  # pairing is never refused
    assert t.arrive("u4", "d", 1.0, "1.1.1.1") is None  # the freed slot is usable again
    assert t.sources() == 2
    assert sorted(t.expire(40.0)) == ["b", "c", "d"]
    assert t.sources() == 0 and len(t) == 0


# ------------------------------------------------------------------ lists
def test_list_files() -> None:
    text = "1.2.3.4 some comment\n# note\n\n::ffff:5.6.7.8\nbogus\n2001:db8::1\n"
    entries = parse_list(text)
    assert entries == {"1.2.3.4", "5.6.7.8", "2001:db8::1"}
    assert parse_list(format_list(entries)) == entries
    lists = IpLists(frozenset({"1.2.3.4"}), frozenset({"5.6.7.8"}))
    assert lists.limited("1.2.3.4") and lists.blocked("5.6.7.8") and not lists.blocked("1.2.3.4")


# ------------------------------------------------------------------ handoff header
def test_transfer_roundtrip_and_garbage() -> None:
    t = Transfer("u", "ws", "::1", 5, b"\x00rest", 1.5)
    assert Transfer.decode(t.encode()) == t
    for garbage in (b"\xc1garbage", b"\x93\x02\x01\x02"):
        with pytest.raises(ContractError):
            Transfer.decode(garbage)
    assert handoff_address("p:", "shard:h:1:ab").startswith("\0hubbub-relay:")
    assert len(handoff_address("p" * 200, "x").encode()) < 108


def test_trickled_first_frame_is_read_incrementally() -> None:
    # A peer may send its first frame one byte per packet; the reader only looks at new bytes.
    payload = request_relay("t" * 200) + b"\x0a\x00" * 20_000  # padding: repeated empty ids
    data = encode_frame(payload) + b"after"
    reader = TcpFirstMessage()
    got = [reader.feed(data[i:i + 1]) for i in range(len(data) - 5)]
    assert got[-1] is not None and got[-1].uuid == "t" * 200
    assert all(h is None for h in got[:-1])
    assert got[-1].leftover == b""


def test_proxy_list_believes_only_trusted_peers() -> None:
    from hubbub.net import ProxyList

    proxies = ProxyList(["10.0.0.0/8", "::1"])
    hdrs = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
    # The right-most entry is the one our proxy appended; the left one is client-supplied.
    assert proxies.client_ip("10.1.2.3", hdrs) == "203.0.113.9"
    assert proxies.client_ip("::ffff:10.1.2.3", {"x-real-ip": " 198.51.100.4 "}) == "198.51.100.4"
    assert proxies.client_ip("::1", {"X-Real-IP": "[::ffff:192.0.2.1]"}) == "192.0.2.1"
    assert proxies.client_ip("192.0.2.7", hdrs) == "192.0.2.7"  # not a proxy of ours
    assert proxies.client_ip("10.1.2.3", {"X-Real-IP": "not-an-ip"}) == "10.1.2.3"
    assert proxies.client_ip("10.1.2.3", None) == "10.1.2.3"
    assert ProxyList([]).client_ip("10.1.2.3", hdrs) == "10.1.2.3"
    # Our own proxies in the chain are skipped: the first other address is the client.
    chain = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.9.9.9"}
    assert proxies.client_ip("10.1.2.3", chain) == "203.0.113.9"
    assert proxies.client_ip("10.1.2.3", {"X-Forwarded-For": "10.9.9.9"}) == "10.9.9.9"
