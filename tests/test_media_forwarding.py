"""The forwarding hot path fed with packets: no sockets, no clock, no aiortc."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

from hubbub.wire.webrtc.rtp import OutboundStream, read_rtp
from shards.media.forwarding import Output, fan_out


@dataclass
class FakeSender:
    """Marks what it protects so the test can tell copies apart (and keeps them)."""

    tag: bytes
    seen: list[bytes] = field(default_factory=list)

    def protect(self, packet: bytes | bytearray) -> bytes | None:
        self.seen.append(bytes(packet))
        return self.tag + bytes(packet)


class FakePath:
    """A subscriber path whose sends land in ``sent`` (or fail, like a full socket buffer)."""

    def __init__(self, sender: FakeSender | None, addr: Any, sent: list[tuple[Any, bytes]],
                 full: bool = False) -> None:
        self.sender = sender
        self.out: Output | None = None
        if sender is not None and addr is not None:
            self.out = (sender.protect, self._send, addr)
        self._sent = sent
        self.full = full

    def _send(self, packet: bytes, addr: Any) -> None:
        if self.full:
            raise BlockingIOError
        self._sent.append((addr, packet))


@dataclass
class FakeSub:
    stream: OutboundStream
    transport: FakePath
    paused: bool = False


def packet(seq: int, ts: int, level: int | None = 0x30, marker: bool = False,
           payload: bytes = b"\x11" * 40) -> bytes:
    b0 = 0x90 if level is not None else 0x80
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | 111, seq, ts, 0xAABBCCDD)
    ext = bytes((0xBE, 0xDE, 0, 1, 0x10, level, 0, 0)) if level is not None else b""
    return head + ext + payload


def test_each_subscriber_gets_its_own_header_over_one_payload() -> None:
    rng = random.Random(7)
    out: list[tuple[Any, bytes]] = []
    with_level = FakeSub(OutboundStream(1001, 100, audio_level_id=10, rng=rng),
                         FakePath(FakeSender(b"A"), ("a", 1), out))
    without = FakeSub(OutboundStream(1002, 101, audio_level_id=0, rng=rng),
                      FakePath(FakeSender(b"B"), ("b", 2), out))
    paused = FakeSub(OutboundStream(1003, 100, rng=rng),
                     FakePath(FakeSender(b"C"), ("c", 3), out), paused=True)
    not_ready = FakeSub(OutboundStream(1004, 100, rng=rng), FakePath(None, ("d", 4), out))
    no_addr = FakeSub(OutboundStream(1005, 100, rng=rng), FakePath(FakeSender(b"E"), None, out))
    full = FakeSub(OutboundStream(1006, 100, rng=rng),
                   FakePath(FakeSender(b"F"), ("f", 6), out, full=True))
    subs = [with_level, without, paused, not_ready, no_addr, full]
    for i, seq in enumerate((100, 101, 103)):  # 102 lost on the way in
        data = packet(seq, 960 * seq, marker=i == 0)
        assert fan_out(data, read_rtp(data, 1), 5.0 + i, subs) == (2, 2, 1)
    assert [a for a, _ in out] == [("a", 1), ("b", 2)] * 3
    a_copies = [read_rtp(p[1:], 10) for a, p in out if a == ("a", 1)]
    b_copies = [read_rtp(p[1:], 0) for a, p in out if a == ("b", 2)]
    assert [c.ssrc for c in a_copies] == [1001] * 3 and [c.ssrc for c in b_copies] == [1002] * 3
    assert [c.payload_type for c in a_copies + b_copies] == [100] * 3 + [101] * 3
    assert [c.marker for c in a_copies] == [True, False, False]
    assert [c.audio_level for c in a_copies] == [0x30] * 3  # re-tagged with the subscriber's id
    assert [c.audio_level for c in b_copies] == [-1] * 3  # no extension for this subscriber
    for copies in (a_copies, b_copies):
        seqs = [(c.seq - copies[0].seq) & 0xFFFF for c in copies]
        assert seqs == [0, 1, 3]  # the gap survives
        assert [(c.timestamp - copies[0].timestamp) & 0xFFFFFFFF for c in copies] == [0, 960, 2880]
    for _, p in out:
        info = read_rtp(p[1:], 10)
        assert p[1 + info.payload_offset:] == b"\x11" * 40
    assert with_level.stream.packets == 3 and with_level.stream.octets == 120
    assert with_level.stream.last_time == 7.0
    assert paused.stream.packets == 0 and not paused.transport.sender.seen  # type: ignore[union-attr]


def test_packets_without_level_and_with_padding_flag() -> None:
    out: list[tuple[Any, bytes]] = []
    sub = FakeSub(OutboundStream(9, 100, audio_level_id=3), FakePath(FakeSender(b""), 1, out))
    data = bytearray(packet(5, 10, level=None))
    data[0] |= 0x20  # padding flag is carried over
    fan_out(bytes(data), read_rtp(bytes(data), 1), 0.0, [sub])
    [(_, copy)] = out
    assert copy[0] == 0xA0 and read_rtp(copy).audio_level == -1


def test_srtp_functions_keep_their_session_alive() -> None:
    """A subscriber's protect function may outlive the sender object that made it."""
    import gc
    import os

    from pylibsrtp import Policy, Session

    from shards.media.stack import SrtpReceiver, SrtpSender

    key = os.urandom(44)

    def session(direction: int) -> Session:
        return Session(Policy(key=key, ssrc_type=direction,
                              srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM))

    protect = SrtpSender(session(Policy.SSRC_ANY_OUTBOUND)).protect
    unprotect = SrtpReceiver(session(Policy.SSRC_ANY_INBOUND)).unprotect
    gc.collect()
    for seq in range(3):
        plain = packet(seq, 960 * seq)
        protected = protect(bytearray(plain))
        assert protected is not None and protected != plain
        assert unprotect(protected) == plain
    assert unprotect(b"\x80" * 40) is None  # fails authentication: None, never an exception
    assert protect(bytearray(4000)) is None  # larger than any packet: refused, never overrun
