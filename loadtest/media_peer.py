"""A minimal WebRTC client of a hubbub media shard, for tests and the media benchmark.

It plays the browser's part against one transport of ``transport_created.options``: a signed
STUN Binding request with USE-CANDIDATE (the shard is ICE-lite), DTLS as client through the
shard's own aiortc adapter, aiortc's SCTP with negotiated data channels, and raw SRTP for
Opus-sized RTP packets. No SDP and no codec: packets carry opaque payloads, which is all an SFU
sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from typing import Any, cast

from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport

from hubbub.wire.webrtc import stun
from hubbub.wire.webrtc.framing import Rfc4571Decoder, frame
from hubbub.wire.webrtc.params import random_token
from hubbub.wire.webrtc.rtp import RtpError, is_rtcp, read_rtp
from shards.media.metrics import Counts
from shards.media.mux import UdpMux
from shards.media.router import MediaRouter
from shards.media.stack import Certificate, DtlsEndpoint, IceLink, new_certificate


__all__ = ["MediaPeer", "local_router", "opus_rtp_parameters", "wait_for"]


def opus_rtp_parameters(ssrc: int, pt: int = 111, level_id: int = 1) -> dict[str, Any]:
    """RtpParameters a browser would send with ``produce`` for its microphone."""
    return {
        "mid": "0",
        "codecs": [{"mimeType": "audio/opus", "payloadType": pt, "clockRate": 48000,
                    "channels": 2, "parameters": {"minptime": 10, "useinbandfec": 1},
                    "rtcpFeedback": []}],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": level_id,
             "encrypt": False, "parameters": {}},
        ],
        "encodings": [{"ssrc": ssrc, "dtx": False}],
        "rtcp": {"cname": random_token(8), "reducedSize": True},
    }


async def local_router(host: str = "127.0.0.1") -> MediaRouter:
    """A shard's ``MediaRouter`` on its own UDP mux bound to ``host`` (no ICE-TCP)."""
    counts = Counts()
    mux = UdpMux(counts)
    await mux.open(host, 0)
    return MediaRouter(mux, new_certificate(), counts, host)


class _TcpFramer(asyncio.Protocol):
    """ICE-TCP (RFC 4571) for a peer: frames in, packets to the peer's datagram handler."""

    def __init__(self, peer: MediaPeer) -> None:
        self.peer = peer
        self.decoder = Rfc4571Decoder()

    def data_received(self, data: bytes) -> None:
        for packet in self.decoder.feed(data):
            self.peer.datagram_received(packet, self.peer.server)


class MediaPeer(asyncio.DatagramProtocol):
    """One client transport: ICE, DTLS-SRTP, SCTP, RTP in and out.

    Args:
        options: ``transport_created.options`` from the shard.
        certificate: this client's DTLS certificate (share one across peers to save CPU).
    """

    def __init__(self, options: dict[str, Any], certificate: Certificate,
                 tcp: bool = False) -> None:
        proto = "tcp" if tcp else "udp"
        cand = next(c for c in options["iceCandidates"] if c["protocol"] == proto)
        self.tcp: asyncio.Transport | None = None
        self.use_tcp = tcp
        self.server = (str(cand["address"]), int(cand["port"]))
        ice = options["iceParameters"]
        self.username = f"{ice['usernameFragment']}:{random_token(8)}"
        self.password = str(ice["password"])
        self.server_fingerprints = [(str(f["algorithm"]), str(f["value"]))
                                    for f in options["dtlsParameters"]["fingerprints"]]
        self.certificate = certificate
        self.link = IceLink(self.sendto, role="controlling", limit=256)
        self.dtls = DtlsEndpoint(self.link, certificate, "client")
        self.sctp: RTCSctpTransport | None = None
        self.sock: asyncio.DatagramTransport | None = None
        self.ice_ok = asyncio.Event()
        self.rtp_received = 0
        self.rtcp_received = 0
        self.received: list[tuple[int, int, int, int, bytes]] = []
        """(ssrc, pt, seq, ts, payload) of received RTP, when ``keep`` is set."""
        self.keep = True
        self.count_only = False
        """Count SRTP/SRTCP datagrams without decrypting them (load generation)."""
        self.messages: list[tuple[int, bytes | str]] = []
        self._keepalive: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not data:
            return
        first = data[0]
        if first < 4:
            with contextlib.suppress(stun.StunError):
                msg = stun.parse(data)
                if msg.type == stun.BINDING_SUCCESS and msg.check_integrity(self.password):
                    self.ice_ok.set()
        elif 19 < first < 64:
            self.link.feed(data)
        elif 127 < first < 192 and self.count_only:
            if is_rtcp(data):
                self.rtcp_received += 1
            else:
                self.rtp_received += 1
        elif 127 < first < 192 and self.dtls.receiver is not None:
            if is_rtcp(data):
                if self.dtls.receiver.unprotect_rtcp(data) is not None:
                    self.rtcp_received += 1
                return
            plain = self.dtls.receiver.unprotect(data)
            if plain is None:
                return
            self.rtp_received += 1
            if self.keep:
                with contextlib.suppress(RtpError):
                    rtp = read_rtp(plain)
                    self.received.append((rtp.ssrc, rtp.payload_type, rtp.seq, rtp.timestamp,
                                          plain[rtp.payload_offset:]))

    def sendto(self, data: bytes) -> None:
        if self.tcp is not None:
            self.tcp.write(frame(data))
        elif self.sock is not None:
            self.sock.sendto(data, self.server)

    # ------------------------------------------------------------- connect
    def dtls_parameters(self) -> dict[str, Any]:
        """``connect_transport.dtlsParameters`` (we are the DTLS client, as browsers are)."""
        return {"role": "client", "fingerprints": [
            {"algorithm": f.algorithm, "value": f.value}
            for f in self.certificate.getFingerprints()]}

    async def connect(self, timeout: float = 10.0) -> None:
        """ICE, then DTLS, then SCTP; raises TimeoutError or ConnectionError."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if self.use_tcp:
                self.tcp, _ = await loop.create_connection(lambda: _TcpFramer(self),
                                                           *self.server)
            else:
                local = "::1" if ":" in self.server[0] else "127.0.0.1"
                await loop.create_datagram_endpoint(lambda: self, local_addr=(local, 0))
            while not self.ice_ok.is_set():
                self._check(use_candidate=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self.ice_ok.wait()
            if not await self.dtls.start(self.server_fingerprints):
                raise ConnectionError(f"DTLS {self.dtls.state}")
            self.sctp = RTCSctpTransport(self.dtls.dtls)
            await self.sctp.start(RTCSctpCapabilities(maxMessageSize=262144), 5000)
            while self.sctp._association_state != RTCSctpTransport.State.ESTABLISHED:
                await asyncio.sleep(0.01)
        self._keepalive = asyncio.ensure_future(self._keepalive_loop())

    def _check(self, use_candidate: bool = False) -> None:
        self.sendto(stun.binding_request(os.urandom(12), self.username, self.password,
                                         use_candidate=use_candidate,
                                         controlling=int.from_bytes(os.urandom(8), "big")))

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self._check()

    # --------------------------------------------------------------- media
    def send_rtp(self, ssrc: int, pt: int, seq: int, ts: int, payload: bytes,
                 level_id: int = 1, level: int = 0x30) -> None:
        """One Opus-like RTP packet with an ``ssrc-audio-level`` element."""
        header = struct.pack("!BBHII", 0x90, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        ext = bytes((0xBE, 0xDE, 0, 1, (level_id << 4), level, 0, 0))
        assert self.dtls.sender is not None
        packet = self.dtls.sender.protect(header + ext + payload)
        if packet is not None:
            self.sendto(packet)

    def data_channel(self, stream_id: int, ordered: bool = False,
                     max_retransmits: int | None = 0) -> RTCDataChannel:
        """A negotiated data channel on ``stream_id`` (as mediasoup-client opens them)."""
        assert self.sctp is not None
        ch = RTCDataChannel(self.sctp, RTCDataChannelParameters(
            label="peer", negotiated=True, id=stream_id, ordered=ordered,
            maxRetransmits=max_retransmits))

        @ch.on("message")
        def _on_message(msg: bytes | str) -> None:
            if len(self.messages) < 100000:
                self.messages.append((stream_id, msg))

        return ch

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        with contextlib.suppress(Exception):
            if self.sctp is not None:
                await self.sctp.stop()
        with contextlib.suppress(Exception):
            await self.dtls.stop()
        self.link.close()
        if self.sock is not None:
            self.sock.close()
        if self.tcp is not None:
            self.tcp.close()


async def wait_for(cond: Any, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(step)
    return bool(cond())
