"""RTP header reading and per-subscriber rewriting for the forwarding fast path.

The SFU never re-encodes: it reads the publisher's header once per packet (sequence number,
timestamp, SSRC, marker, the ``ssrc-audio-level`` element), then writes one new header per
subscriber with that subscriber's SSRC, payload type and header-extension ids. Sequence numbers
and timestamps are shifted by a fixed per-subscriber offset, so the publisher's gaps stay visible
to the receiver's jitter buffer (loss concealment and FEC depend on them).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from hubbub.errors import RemoteProtocolError


__all__ = [
    "OutboundStream",
    "PacketCopies",
    "RtpError",
    "RtpInfo",
    "is_rtcp",
    "packet_template",
    "read_rtp",
]

_HDR = struct.Struct("!BBHII")
HEADER = _HDR.size
LEVEL_BLOCK = 8
"""The extension block a forwarded packet carries: profile, length, one ``ssrc-audio-level``
element and padding to the word."""
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000


class RtpError(RemoteProtocolError):
    code = "rtp"


def is_rtcp(data: bytes) -> bool:
    """RFC 5761: payload types 192..223 in the second byte are RTCP."""
    return len(data) >= 8 and 191 < data[1] < 224


@dataclass(frozen=True, slots=True)
class RtpInfo:
    """What the forwarder needs from one (decrypted) publisher packet."""

    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload_offset: int
    padding: bool
    audio_level: int
    """Raw ``ssrc-audio-level`` byte (V flag + -dBov), or -1 when absent."""


def read_rtp(data: bytes, audio_level_id: int = 0) -> RtpInfo:
    """Parse the header of a plaintext RTP packet.

    Args:
        data: the packet after SRTP unprotect.
        audio_level_id: the publisher's negotiated id of ``ssrc-audio-level`` (0: none).

    Raises:
        RtpError: the header is truncated or not version 2.
    """
    n = len(data)
    if n < 12:
        raise RtpError("short RTP packet")
    b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError("RTP version is not 2")
    pos = 12 + 4 * (b0 & 0x0F)
    level = -1
    if b0 & 0x10:
        if pos + 4 > n:
            raise RtpError("truncated RTP extension header")
        profile, words = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        pos = start + 4 * words
        if pos > n:
            raise RtpError("truncated RTP extension block")
        if audio_level_id:
            level = _find_level(data, start, pos, profile, audio_level_id)
    if pos > n:
        raise RtpError("truncated RTP header")
    return RtpInfo(bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, pos, bool(b0 & 0x20), level)


def _find_level(data: bytes, start: int, end: int, profile: int, want: int) -> int:
    i = start
    if profile == ONE_BYTE_PROFILE:
        while i < end:
            b = data[i]
            if b == 0:  # padding
                i += 1
                continue
            ident, length = b >> 4, (b & 0x0F) + 1
            if ident == 15:
                break
            if ident == want and i + 1 < end:
                return data[i + 1]
            i += 1 + length
    elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        while i + 1 < end:
            ident = data[i]
            if ident == 0:
                i += 1
                continue
            length = data[i + 1]
            if ident == want and length >= 1 and i + 2 < end:
                return data[i + 2]
            i += 2 + length
    return -1


def packet_template(data: bytes, info: RtpInfo, with_level: bool) -> bytearray:
    """A subscriber packet without its fixed header: room for it, the ``ssrc-audio-level``
    element when ``with_level`` (its id byte written per subscriber), then the payload."""
    if with_level:
        buf = bytearray(HEADER + LEVEL_BLOCK)
        buf[12:16] = b"\xbe\xde\x00\x01"  # one-byte profile, one word of elements
        buf[17] = info.audio_level
    else:
        buf = bytearray(HEADER)
    buf += memoryview(data)[info.payload_offset:]
    return buf


class PacketCopies:
    """One publisher packet on its way to its subscribers.

    At most two templates are made (with and without the audio-level element), on first use;
    each subscriber writes its own header over one (``OutboundStream.write``) and the packet is
    protected from that buffer, so no other copy is made per subscriber.
    """

    __slots__ = ("data", "info", "with_level", "without")

    def __init__(self, data: bytes, info: RtpInfo) -> None:
        self.data = data
        self.info = info
        self.with_level: bytearray | None = None
        self.without: bytearray | None = None


class OutboundStream:
    """One subscriber's view of one publisher stream: its SSRC, payload type and offsets.

    Args:
        ssrc: the SSRC announced to the subscriber in ``rtpParameters.encodings``.
        payload_type: the subscriber's payload type for the codec.
        audio_level_id: the subscriber's id for ``ssrc-audio-level`` (0: do not send it).
        rng: source of the random initial sequence number and timestamp.
    """

    __slots__ = ("ssrc", "payload_type", "audio_level_id", "_seq_off", "_ts_off", "_started",
                 "_rng", "packets", "octets", "last_ts", "last_time")

    def __init__(self, ssrc: int, payload_type: int, audio_level_id: int = 0,
                 rng: random.Random | None = None) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.audio_level_id = audio_level_id
        self._rng = rng or random.Random()
        self._seq_off = 0
        self._ts_off = 0
        self._started = False
        self.packets = 0
        self.octets = 0
        self.last_ts = 0
        self.last_time = 0.0

    def write(self, copies: PacketCopies, now: float) -> bytearray:
        """This subscriber's copy of the packet: its header written over the right template
        of ``copies``; valid until the next subscriber's write."""
        info = copies.info
        if not self._started:
            # Offsets are fixed at the first forwarded packet and never change afterwards.
            self._started = True
            self._seq_off = (self._rng.getrandbits(15) - info.seq) & 0xFFFF
            self._ts_off = (self._rng.getrandbits(31) - info.timestamp) & 0xFFFFFFFF
        ts = (info.timestamp + self._ts_off) & 0xFFFFFFFF
        b0 = 0xA0 if info.padding else 0x80
        if self.audio_level_id and info.audio_level >= 0:
            buf = copies.with_level
            if buf is None:
                buf = copies.with_level = packet_template(copies.data, info, True)
            b0 |= 0x10
            buf[16] = self.audio_level_id << 4
            self.octets += len(buf) - HEADER - LEVEL_BLOCK
        else:
            buf = copies.without
            if buf is None:
                buf = copies.without = packet_template(copies.data, info, False)
            self.octets += len(buf) - HEADER
        _HDR.pack_into(buf, 0, b0, (0x80 if info.marker else 0) | self.payload_type,
                       (info.seq + self._seq_off) & 0xFFFF, ts, self.ssrc)
        self.packets += 1
        self.last_ts = ts
        self.last_time = now
        return buf

    def rewrite(self, data: bytes, info: RtpInfo, now: float) -> bytes:
        """The subscriber's copy of publisher packet ``data`` (plaintext, ready to protect)."""
        return bytes(self.write(PacketCopies(data, info), now))
