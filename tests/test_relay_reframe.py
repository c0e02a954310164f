"""Relay bytes without sockets: the first message's leftover is exact, messages stream through.

Fed byte strings only (sans-I/O): every split point of crafted and random inputs, and hostile
streams that announce huge messages or never finish them, with the bytes each piece holds.
"""

from __future__ import annotations

import random

import pytest

from hubbub.errors import FrameTooLarge
from hubbub.wire.relay.first_message import TcpFirstMessage, WsFirstMessage
from hubbub.wire.relay.reframe import ASSEMBLY_CAP, Collect, TcpDecoder, TcpEncoder, WsEncoder
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.websocket import OP_BINARY, OP_CONT, OP_PING, WsDecoder, frame_header
from loadtest.bench_relay import WsClient, request_relay, request_relay_frame


UPGRADE = (b"GET /ws/relay HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

# Byte strings a peer may send right behind its RequestRelay that look like BytesCodec frames
# but must not be touched: over-long headers, partial frames, headers of huge frames.
CRAFTED = [
    b"\x15\x00hello",  # 5 bytes behind a 2-byte header that 1 byte could carry
    b"\x16\x00\x00hello",  # the same with a 3-byte header
    b"\x17\x00\x00\x00hello",  # and a 4-byte one
    b"\x03\x00\x00\x00",  # an empty frame with a 4-byte header
    encode_frame(b"a" * 100) + b"\x01",  # a whole frame, then the first byte of a header
    b"\xff\xff\xff\xff" + b"z" * 40,  # the header of a 1 GiB frame, never finished
    bytes(range(256)),
]


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    out = []
    i = 0
    while i < len(data):
        k = rng.choice((1, 2, 3, 7, 100, 4096, 1 << 16))
        out.append(data[i:i + k])
        i += k
    return out


def _tcp_leftover(data: bytes, pieces: list[bytes]) -> bytes:
    """Feed ``pieces``; the hello's leftover plus whatever arrived after the hello."""
    reader = TcpFirstMessage()
    after: list[bytes] = []
    leftover: bytes | None = None
    for piece in pieces:
        if leftover is not None:
            after.append(piece)
            continue
        hello = reader.feed(piece)
        if hello is not None:
            leftover = hello.leftover
    assert leftover is not None
    return leftover + b"".join(after)


@pytest.mark.parametrize("tail", CRAFTED, ids=range(len(CRAFTED)))
def test_tcp_leftover_is_every_byte_unchanged_at_every_split(tail: bytes) -> None:
    data = request_relay_frame("u-crafted", "k") + tail
    for cut in range(1, len(data)):
        assert _tcp_leftover(data, [data[:cut], data[cut:]]) == tail


def test_tcp_leftover_of_random_payloads_is_unchanged() -> None:
    # Random bytes behind the first frame often parse as frames with over-long headers.
    rng = random.Random(7)
    head = request_relay_frame("u-random")
    for _ in range(2000):
        tail = rng.randbytes(rng.choice((1, 2, 5, 64, 1024)))
        data = head + tail
        assert _tcp_leftover(data, _split(data, rng)) == tail


def test_ws_leftover_is_every_byte_unchanged() -> None:
    rng = random.Random(8)
    tail = (WsClient.frame(b"next") + WsClient.frame(b"\x15\x00hello", 2, fin=False)
            + WsClient.frame(rng.randbytes(300), 0)[:50])
    data = UPGRADE + WsClient.frame(request_relay("w-crafted")) + tail
    for cut in range(len(UPGRADE), len(data)):
        first = WsFirstMessage()
        out, hello = first.feed(data[:cut])
        if hello is None:
            out, hello = first.feed(data[cut:])
            assert hello is not None and hello.leftover == tail
        else:
            assert hello.leftover + data[cut:] == tail


# ------------------------------------------------------------------ streaming codecs
def _ws_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Server (unmasked) frames -> (opcode, payload) messages, fragments joined."""
    out: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    op0 = 0
    i = 0
    while i < len(data):
        b0, n = data[i], data[i + 1] & 0x7F
        hl = 2
        if n == 126:
            n, hl = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, hl = int.from_bytes(data[i + 2:i + 10], "big"), 10
        payload = data[i + hl:i + hl + n]
        assert len(payload) == n, "truncated frame"
        i += hl + n
        op, fin = b0 & 0x0F, bool(b0 & 0x80)
        if op >= 8:
            out.append((op, payload))
            continue
        if op != OP_CONT:
            op0, parts = op, []
        parts.append(payload)
        if fin:
            out.append((op0, b"".join(parts)))
    return out


def _drain(enc: TcpEncoder | WsEncoder) -> bytes:
    data = b"".join(bytes(c) for c in enc.out)
    enc.out.clear()
    return data


def _feed_split(dec: WsDecoder, enc: TcpEncoder | WsEncoder, stream: bytes,
                rng: random.Random) -> bytes:
    """Feed ``stream`` in random pieces; every byte the encoder put out."""
    got = b""
    for piece in _split(stream, rng):
        dec.feed(piece)
        got += _drain(enc)
    return got


def test_tcp_to_ws_streams_messages_at_every_split() -> None:
    rng = random.Random(9)
    messages = [rng.randbytes(n) for n in (1, 63, 64, 200, 16383, 16384, 70000, 0, 5)]
    stream = b"".join(encode_frame(m) for m in messages)
    for _ in range(20):
        enc = WsEncoder()
        dec = TcpDecoder(enc, 1 << 20)
        got = b""
        for piece in _split(stream, rng):
            assert dec.feed(piece) == len(piece)
            got += _drain(enc)
        assert _ws_messages(got) == [(OP_BINARY, m) for m in messages if m]


def test_ws_to_tcp_streams_frames_and_assembles_fragments() -> None:
    rng = random.Random(10)
    whole = rng.randbytes(100_000)
    frag = [rng.randbytes(n) for n in (10, 0, 3000)]
    stream = (WsClient.frame(whole) + WsClient.frame(frag[0], 2, fin=False)
              + WsClient.frame(b"ping", OP_PING) + WsClient.frame(frag[1], 0, fin=False)
              + WsClient.frame(frag[2], 0) + WsClient.frame(b"text", 1) + WsClient.frame(b""))
    enc = TcpEncoder()
    dec = WsDecoder(enc, 1 << 20)
    got = _feed_split(dec, enc, stream, rng)
    assert FrameDecoder(1 << 20).feed(got) == [whole, b"".join(frag)]
    assert dec.replies() == [frame_header(0xA, 4) + b"ping"]


def test_ws_to_ws_keeps_message_boundaries() -> None:
    rng = random.Random(11)
    a, b, c = rng.randbytes(70_000), rng.randbytes(5), rng.randbytes(9)
    stream = (WsClient.frame(a) + WsClient.frame(b, 2, fin=False) + WsClient.frame(c, 0)
              + WsClient.frame(b"", 2, fin=False) + WsClient.frame(b"", 0))
    enc = WsEncoder()
    dec = WsDecoder(enc, 1 << 20)
    got = _feed_split(dec, enc, stream, rng)
    assert _ws_messages(got) == [(OP_BINARY, a), (OP_BINARY, b + c)]


def test_huge_frame_never_finished_is_streamed_not_held() -> None:
    """A 16 MiB TCP frame for a WebSocket side: the header goes out at once, every payload
    byte as it arrives; the decoder and encoder keep nothing between calls."""
    enc = WsEncoder()
    dec = TcpDecoder(enc, 16 << 20)
    dec.feed(((16 << 20) << 2 | 3).to_bytes(4, "little"))
    assert _drain(enc) == frame_header(OP_BINARY, 16 << 20)
    sent = 0
    for _ in range(64):
        chunk = b"\x01" * 65536
        dec.feed(chunk)
        sent += len(_drain(enc))
    assert sent == 64 * 65536 and len(dec._head) == 0
    # A ping from the WebSocket side waits for the frame to end (one pong at most).
    enc.control(frame_header(0xA, 0))
    enc.control(frame_header(0xA, 1) + b"x")
    assert _drain(enc) == b""
    assert enc.closing() == b""  # no close frame inside a half-written frame


def test_fragmented_message_for_tcp_is_capped() -> None:
    enc = TcpEncoder()
    dec = WsDecoder(enc, 16 << 20)
    dec.feed(WsClient.frame(b"x" * 65536, 2, fin=False))
    for _ in range(ASSEMBLY_CAP // 65536 - 2):
        dec.feed(WsClient.frame(b"x" * 65536, 0, fin=False))
    assert enc.held() == ASSEMBLY_CAP - 65536 and _drain(enc) == b""
    with pytest.raises(FrameTooLarge):
        dec.feed(WsClient.frame(b"x" * 65537, 0, fin=False))


def test_fragmented_message_for_ws_is_streamed_as_fragments() -> None:
    enc = WsEncoder()
    dec = WsDecoder(enc, 16 << 20)
    dec.feed(WsClient.frame(b"a" * 1000, 2, fin=False))
    out = _drain(enc)
    assert out == frame_header(OP_BINARY, 1000, fin=False) + b"a" * 1000
    dec.feed(WsClient.frame(b"p", OP_PING))  # between fragments a pong may go out at once
    enc.control(dec.replies()[0])
    assert _drain(enc) == frame_header(0xA, 1) + b"p"
    dec.feed(WsClient.frame(b"b" * 10, 0))
    assert _drain(enc) == frame_header(OP_CONT, 10, fin=False) + b"b" * 10 + frame_header(
        OP_CONT, 0)


def test_collect_keeps_whole_messages() -> None:
    sink = Collect()
    dec = TcpDecoder(sink, 100)
    assert dec.feed(encode_frame(b"one") + encode_frame(b"") + b"\x08") == 6
    assert sink.messages == [b"one", b""] and sink.held() == 0
    with pytest.raises(FrameTooLarge):
        TcpDecoder(Collect(), 100).feed(encode_frame(b"x" * 101)[:2])
