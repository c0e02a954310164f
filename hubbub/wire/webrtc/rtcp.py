"""RTCP for a voice SFU: receiver reports to publishers, sender reports to subscribers.

``ReceiveStats`` follows RFC 3550 appendix A (extended highest sequence, cumulative and
interval loss, interarrival jitter) for one publisher SSRC; ``receiver_report`` and
``sender_report`` build the compound packets (with SDES CNAME) that Chromium needs for its
loss adaptation and ``remote-*`` statistics. ``sender_infos`` reads the publisher's SRs so the RR
can carry LSR/DLSR (round-trip time).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hubbub.wire.webrtc.rtp import OutboundStream


__all__ = [
    "NTP_EPOCH_OFFSET",
    "ReceiveStats",
    "SenderInfo",
    "ntp_time",
    "receiver_report",
    "sender_infos",
    "sender_report",
]

NTP_EPOCH_OFFSET = 2208988800
PT_SR = 200
PT_RR = 201
PT_SDES = 202
MAX_DROPOUT = 3000
MAX_MISORDER = 100


def ntp_time(unix: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    return int((unix + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The part of a publisher's SR a receiver report echoes back."""

    ssrc: int
    ntp: int
    rtp_timestamp: int


class ReceiveStats:
    """Reception statistics of one incoming SSRC (RFC 3550 A.1, A.3, A.8)."""

    __slots__ = ("clock_rate", "base_seq", "max_seq", "cycles", "received", "expected_prior",
                 "received_prior", "jitter", "transit", "started", "lsr", "lsr_time")

    def __init__(self, clock_rate: int = 48000) -> None:
        self.clock_rate = clock_rate
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self.transit: int | None = None
        self.started = False
        self.lsr = 0
        self.lsr_time = 0.0

    def update(self, seq: int, timestamp: int, now: float) -> None:
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += 1 << 16
                self.max_seq = seq
            elif delta >= 0x10000 - MAX_MISORDER or delta == 0:
                pass  # duplicate or reordered: counted, no new maximum
            else:
                # A large jump: the sender restarted; resynchronise.
                self.base_seq = self.max_seq = seq
                self.cycles = 0
                self.received = self.expected_prior = self.received_prior = 0
        self.received += 1
        arrival = int(now * self.clock_rate)
        transit = (arrival - timestamp) & 0xFFFFFFFF
        if self.transit is not None:
            d = abs(((transit - self.transit + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
            self.jitter += (d - self.jitter) / 16.0
        self.transit = transit

    def on_sender_report(self, ntp: int, now: float) -> None:
        self.lsr = (ntp >> 16) & 0xFFFFFFFF
        self.lsr_time = now

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    def report_block(self, ssrc: int, now: float) -> bytes:
        """One 24-byte report block; advances the interval counters."""
        expected = self.extended_max - self.base_seq + 1
        lost = max(-0x800000, min(0x7FFFFF, expected - self.received))
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self.lsr:
            dlsr = int((now - self.lsr_time) * 65536) & 0xFFFFFFFF
        return struct.pack("!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF),
                           self.extended_max & 0xFFFFFFFF, int(self.jitter) & 0xFFFFFFFF,
                           self.lsr, dlsr)


def _sdes(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, PT_SDES, (4 + len(chunk)) // 4 - 1) + chunk


def receiver_report(sender_ssrc: int, blocks: list[tuple[int, ReceiveStats]], now: float,
                    cname: str) -> bytes:
    """Compound RR (+ SDES) about up to 31 publisher SSRCs."""
    blocks = blocks[:31]
    body = b"".join(stats.report_block(ssrc, now) for ssrc, stats in blocks)
    rr = struct.pack("!BBHI", 0x80 | len(blocks), PT_RR, (8 + len(body)) // 4 - 1,
                     sender_ssrc) + body
    return rr + _sdes(sender_ssrc, cname)


def sender_report(stream: OutboundStream, now: float, cname: str, clock_rate: int = 48000) -> bytes:
    """Compound SR (+ SDES) for one subscriber stream, extrapolating its RTP clock to ``now``."""
    ntp = ntp_time(now)
    rtp_ts = stream.last_ts
    if stream.last_time:
        rtp_ts = (rtp_ts + int((now - stream.last_time) * clock_rate)) & 0xFFFFFFFF
    sr = struct.pack("!BBHIIIIII", 0x80, PT_SR, 6, stream.ssrc, ntp >> 32, ntp & 0xFFFFFFFF,
                     rtp_ts, stream.packets & 0xFFFFFFFF, stream.octets & 0xFFFFFFFF)
    return sr + _sdes(stream.ssrc, cname)


def sender_infos(data: bytes) -> list[SenderInfo]:
    """Sender reports inside a (decrypted) compound RTCP packet; malformed parts are skipped."""
    out: list[SenderInfo] = []
    pos = 0
    n = len(data)
    for _ in range(16):
        if pos + 4 > n:
            break
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 * (words + 1)
        if b0 >> 6 != 2 or end > n:
            break
        if pt == PT_SR and end - pos >= 28:
            ssrc, msw, lsw, rtp_ts = struct.unpack_from("!IIII", data, pos + 4)
            out.append(SenderInfo(ssrc, (msw << 32) | lsw, rtp_ts))
        pos = end
    return out
