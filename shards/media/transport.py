"""A mediasoup-style WebRtcTransport on the shard's shared UDP socket.

ICE is our own ICE-lite responder (``hubbub.wire.webrtc.ice``). DTLS, SCTP and SRTP come from
``shards.media.stack`` (aiortc and pylibsrtp behind one adapter), driven through ``IceLink`` so
aiortc never owns a socket. SRTP packets never enter aiortc: ``on_srtp`` unprotects them once
and ``shards.media.forwarding`` fans them out to the producer's consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from hubbub.limits import TokenBucket
from hubbub.wire.webrtc import rtcp
from hubbub.wire.webrtc.ice import (
    IceDisconnected,
    IceLite,
    IceSelected,
    Key,
    TupleAdded,
    TupleRemoved,
)
from hubbub.wire.webrtc.params import (
    SCTP_MAX_MESSAGE_SIZE,
    SCTP_PORT,
    SCTP_STREAMS,
    DataProducerSpec,
    ParamsError,
    ProducerSpec,
    random_token,
)
from hubbub.wire.webrtc.rtp import OutboundStream, RtpError, is_rtcp, read_rtp
from shards.media import metrics
from shards.media.forwarding import Output, fan_out
from shards.media.metrics import Counts
from shards.media.mux import UdpMux
from shards.media.sctp import SctpAssociation
from shards.media.stack import Certificate, DtlsEndpoint, IceLink, SrtpReceiver, SrtpSender


__all__ = ["Consumer", "DataConsumer", "DataProducer", "Producer", "Transport"]

log = logging.getLogger("hubbub.media.transport")

DTLS_QUEUE = 64
"""DTLS records buffered before the handshake task reads them (the handshake needs ~5)."""
SCTP_QUEUE = 256
"""Unsent SCTP chunks per subscriber transport before relayed messages are dropped."""
RTP_RATE, RTP_BURST = 200.0, 400.0
"""Packets/s a producer may send (Opus sends 50, or 100 with 10 ms frames); more is dropped
before fan-out so one client cannot multiply its traffic by the number of listeners."""
DC_RATE, DC_BURST = 60.0, 120.0
"""Messages/s a data producer may send (Wired sends 15 location records per second)."""
_SSRC = struct.Struct("!I")


@dataclass(eq=False, slots=True)
class Consumer:
    """One subscriber's copy of one producer; starts paused until ``resume_audio``."""

    id: str
    session_id: str
    producer: Producer
    transport: Transport
    stream: OutboundStream
    paused: bool = True

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.producer.consumers.remove(self)
        with contextlib.suppress(ValueError):
            self.transport.consumers.remove(self)


@dataclass(eq=False)
class Producer:
    """An Opus stream a client sends; forwards each packet to its active consumers."""

    id: str
    session_id: str
    transport: Transport
    spec: ProducerSpec
    counts: Counts
    consumers: list[Consumer] = field(default_factory=list)
    stats: rtcp.ReceiveStats = field(default_factory=rtcp.ReceiveStats)
    ssrc: int | None = None
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(RTP_RATE, RTP_BURST))
    loudness: float = 0.0
    """Smoothed 127 − level (dBov) from ``ssrc-audio-level``: higher is louder."""
    heard: int = 0
    """Packets since the last speaker selection."""
    active: bool = True
    """False while other voices of the space are louder (``MEDIA_MAX_SPEAKERS``)."""

    def forward(self, plain: bytes, now: float) -> None:
        if not self.bucket.allow(now):
            self.counts.drop_rate += 1
            return
        try:
            info = read_rtp(plain, self.spec.audio_level_id)
        except RtpError:
            self.counts.drop_parse += 1
            return
        if info.payload_type != self.spec.payload_type:
            return  # e.g. comfort noise or DTMF the router did not negotiate
        self.counts.rtp_in += 1
        self.stats.update(info.seq, info.timestamp, now)
        self.heard += 1
        if info.audio_level >= 0:
            self.loudness += (127 - (info.audio_level & 0x7F) - self.loudness) * 0.1
        if not self.active:
            self.counts.drop_inactive += 1
            return
        sent, not_ready, refused = fan_out(plain, info, now, self.consumers)
        counts = self.counts
        counts.rtp_out += sent
        counts.drop_not_ready += not_ready
        counts.drop_send += refused

    def close(self) -> None:
        for c in list(self.consumers):
            c.close()
        self.transport.remove_producer(self)


@dataclass(eq=False)
class DataConsumer:
    id: str
    session_id: str
    data_producer: DataProducer
    transport: Transport
    stream_id: int

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.data_producer.consumers.remove(self)
        with contextlib.suppress(ValueError):
            self.transport.data_consumers.remove(self)
        self.transport.release_stream(self.stream_id)


@dataclass(eq=False)
class DataProducer:
    id: str
    session_id: str
    transport: Transport
    spec: DataProducerSpec
    consumers: list[DataConsumer] = field(default_factory=list)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(DC_RATE, DC_BURST))

    def close(self) -> None:
        for c in list(self.consumers):
            c.close()
        if self.transport.data_producers.get(self.spec.stream_id) is self:
            del self.transport.data_producers[self.spec.stream_id]


class Transport:
    """One WebRtcTransport (a client's send or receive transport).

    Args:
        transport_id: the id handed to the client.
        kind: ``"producer"`` or ``"consumer"`` (the Wired ``type``).
        session_id: owning session.
        mux: the shard's UDP mux.
        certificate: the shard's DTLS certificate (shared by every transport).
        counts: the shard's hot-path counters.
    """

    def __init__(self, transport_id: str, kind: str, session_id: str, mux: UdpMux,
                 certificate: Certificate, counts: Counts) -> None:
        self.id = transport_id
        self.kind = kind
        self.session_id = session_id
        self.mux = mux
        self.counts = counts
        self.ice = IceLite(random_token(16), random_token(32))
        self.link = IceLink(self.send_raw, limit=DTLS_QUEUE)
        self.dtls = DtlsEndpoint(self.link, certificate, "client")
        self.sctp: SctpAssociation | None = None
        self.remote_prints: list[tuple[str, str]] = []
        self.remote_role = "auto"
        self.receiver: SrtpReceiver | None = None
        self.sender: SrtpSender | None = None
        self.addr: Key | None = None
        self.out: Output | None = None
        """Protect, send and address once DTLS keys and the ICE path are known (fast path)."""
        self.state = "new"
        self.producers: dict[int, Producer] = {}
        self.unbound: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.data_producers: dict[int, DataProducer] = {}
        self.data_consumers: list[DataConsumer] = []
        self.data_streams: set[int] = set()
        self._next_stream = 0
        self.next_mid = 0
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.cname = random_token(16)
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        mux.add_transport(self)

    # ------------------------------------------------------------ signalling
    def connect(self, dtls_parameters: Any) -> None:
        """Apply ``connect_transport.dtlsParameters`` (the client's role and fingerprints).

        Raises:
            ParamsError: malformed parameters or a second connect.
        """
        if self.remote_prints:
            raise ParamsError("transport already connected")
        if not isinstance(dtls_parameters, dict):
            raise ParamsError("dtlsParameters must be an object")
        fps = dtls_parameters.get("fingerprints")
        if not isinstance(fps, list) or not fps:
            raise ParamsError("dtlsParameters.fingerprints is empty")
        prints = []
        for fp in fps[:8]:
            if isinstance(fp, dict) and isinstance(fp.get("algorithm"), str) \
                    and isinstance(fp.get("value"), str) and len(fp["value"]) <= 256:
                prints.append((fp["algorithm"], fp["value"]))
        if not prints:
            raise ParamsError("dtlsParameters.fingerprints is invalid")
        role = dtls_parameters.get("role", "auto")
        if role not in ("auto", "client", "server"):
            raise ParamsError("dtlsParameters.role is invalid")
        # As mediasoup: a client-role peer makes us the server; otherwise we are the client
        # (we are ICE-controlled, so an "auto" peer is expected to answer).
        self.dtls.set_role("server" if role == "client" else "client")
        self.remote_prints, self.remote_role = prints, role
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self._task is None and self.remote_prints and self.addr is not None \
                and not self.closed:
            self.state = "connecting"
            self._task = asyncio.ensure_future(self._run_dtls())

    async def _run_dtls(self) -> None:
        connected = await self.dtls.start(self.remote_prints, self.remote_role)
        if self.closed:
            return
        if not connected:
            log.debug("transport %s: DTLS failed (%s)", self.id, self.dtls.state)
            metrics.DTLS.labels("failed").inc()
            self.state = "failed"
            return
        metrics.DTLS.labels("ok").inc()
        self.receiver, self.sender = self.dtls.receiver, self.dtls.sender
        self._update_out()
        self.state = "connected"
        self.sctp = SctpAssociation(self.dtls, SCTP_PORT, SCTP_STREAMS, self.on_sctp_message)
        try:
            await self.sctp.open(SCTP_MAX_MESSAGE_SIZE, SCTP_PORT)
        except Exception as exc:
            log.debug("transport %s: SCTP start failed: %s", self.id, exc)

    # -------------------------------------------------------------- packets
    @property
    def ufrag(self) -> str:
        return self.ice.ufrag

    @property
    def tuples(self) -> list[Key]:
        return list(self.ice.tuples)

    def on_dtls(self, data: bytes) -> None:
        self.link.feed(data)

    def on_stun(self, data: bytes, addr: tuple[str, int], now: float, key: Key) -> None:
        reply = self.ice.receive_stun(data, addr, now, key)
        if reply is None:
            self.counts.stun_bad += 1
        else:
            self.counts.stun_ok += 1
        self._ice_events()
        if reply is not None:
            self.mux.send(key, reply)

    def _ice_events(self) -> None:
        for ev in self.ice.events_received():
            if isinstance(ev, TupleAdded):
                self.mux.add_addr(ev.addr, self)
            elif isinstance(ev, TupleRemoved):
                self.mux.remove_addr(ev.addr, self)
            elif isinstance(ev, IceSelected):
                self.addr = ev.addr
                self._update_out()
                self._maybe_start()
            elif isinstance(ev, IceDisconnected):
                log.debug("transport %s: ICE consent expired", self.id)

    def forget_addr(self, addr: Key) -> None:
        """The tuple is gone (ICE-TCP closed, or taken by a newer transport)."""
        self.ice.forget(addr)
        if self.addr == addr:
            self.addr = None
            self._update_out()

    def _update_out(self) -> None:
        if self.sender is None or self.addr is None or self.closed:
            self.out = None
        else:
            send, addr = self.mux.sender_for(self.addr)
            self.out = (self.sender.protect, send, addr)

    def check_consent(self, now: float) -> None:
        self.ice.handle_timer(now)
        self._ice_events()

    def send_raw(self, data: bytes) -> None:
        if self.addr is not None:
            self.mux.send(self.addr, data)

    def on_srtp(self, data: bytes) -> None:
        rx = self.receiver
        if rx is None:
            self.counts.drop_not_ready += 1
            return
        now = time.time()
        if is_rtcp(data):
            plain = rx.unprotect_rtcp(data)
            if plain is None:
                self.counts.drop_srtp += 1
                return
            for info in rtcp.sender_infos(plain):
                p = self.producers.get(info.ssrc)
                if p is not None:
                    p.stats.on_sender_report(info.ntp, now)
            return
        plain = rx.unprotect(data)
        if plain is None or len(plain) < 12:
            self.counts.drop_srtp += 1
            return
        ssrc = _SSRC.unpack_from(plain, 8)[0]
        producer = self.producers.get(ssrc)
        if producer is None:
            producer = self._bind_ssrc(ssrc)
            if producer is None:
                self.counts.drop_unknown_ssrc += 1
                return
        producer.forward(plain, now)

    def _bind_ssrc(self, ssrc: int) -> Producer | None:
        # A producer announced without an SSRC takes the first unknown SSRC that arrives.
        if not self.unbound:
            return None
        p = self.unbound.pop(0)
        p.ssrc = ssrc
        self.producers[ssrc] = p
        return p

    def add_producer(self, p: Producer) -> None:
        if p.spec.ssrc is None:
            self.unbound.append(p)
        else:
            p.ssrc = p.spec.ssrc
            self.producers[p.spec.ssrc] = p

    def remove_producer(self, p: Producer) -> None:
        if p.ssrc is not None and self.producers.get(p.ssrc) is p:
            del self.producers[p.ssrc]
        with contextlib.suppress(ValueError):
            self.unbound.remove(p)

    def new_mid(self) -> str:
        mid = str(self.next_mid)
        self.next_mid += 1
        return mid

    def allocate_stream(self) -> int | None:
        # Round robin: a just-released stream id is reused last, after its reset completed.
        for i in range(SCTP_STREAMS):
            sid = (self._next_stream + i) % SCTP_STREAMS
            if sid not in self.data_streams:
                self.data_streams.add(sid)
                self._next_stream = sid + 1
                return sid
        return None

    def release_stream(self, stream_id: int) -> None:
        self.data_streams.discard(stream_id)
        if self.sctp is not None and not self.closed:
            self.sctp.reset_stream(stream_id)

    # -------------------------------------------------------- data channels
    def on_sctp_message(self, stream_id: int, pp_id: int, data: bytes) -> None:
        dp = self.data_producers.get(stream_id)
        if dp is None or pp_id == 50:  # unknown stream or DCEP: negotiated channels only
            return
        self.counts.dc_in += 1
        if not dp.bucket.allow(time.monotonic()):
            self.counts.dc_dropped += 1
            return
        spec = dp.spec
        expiry = None
        if spec.max_packet_life_time is not None:
            expiry = time.time() + spec.max_packet_life_time / 1000
        # Queueing never runs other code, so the consumer list cannot change meanwhile.
        for dc in dp.consumers:
            dc.transport.send_data(dc.stream_id, pp_id, data, spec, expiry)

    def send_data(self, stream_id: int, pp_id: int, data: bytes, spec: DataProducerSpec,
                  expiry: float | None) -> None:
        """Queue one relayed message for this (subscriber) transport's association; it goes
        out with the others of this loop iteration. Dropped when the association is not up or
        its queue is full."""
        sctp = self.sctp
        if sctp is not None:
            try:
                queued = sctp.offer(stream_id, pp_id, data, expiry, spec.max_retransmits,
                                    spec.ordered, SCTP_QUEUE)
            except Exception:
                # Whatever a subscriber's association does must not fail the publisher's
                # receive path.
                queued = False
            if queued:
                self.counts.dc_out += 1
                return
        self.counts.dc_dropped += 1

    # ----------------------------------------------------------------- RTCP
    def send_reports(self, now: float) -> int:
        """RR about this transport's producers, SR for its consumers; returns packets sent."""
        tx, addr = self.sender, self.addr
        if tx is None or addr is None:
            return 0
        packets = []
        blocks = [(ssrc, p.stats) for ssrc, p in self.producers.items() if p.stats.started]
        if blocks:
            packets.append(rtcp.receiver_report(self.rtcp_ssrc, blocks, now, self.cname))
        packets += [rtcp.sender_report(c.stream, now, c.producer.spec.cname)
                    for c in self.consumers if c.stream.packets]
        sent = 0
        for pkt in packets:
            protected = tx.protect_rtcp(pkt)
            if protected is not None:
                self.mux.send(addr, protected)
                sent += 1
        return sent

    # ---------------------------------------------------------------- close
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = "closed"
        for p in list(self.producers.values()) + list(self.unbound):
            p.close()
        for c in list(self.consumers):
            c.close()
        for dp in list(self.data_producers.values()):
            dp.close()
        for dc in list(self.data_consumers):
            dc.close()
        self.mux.remove_transport(self)
        self.ice.close()
        self.ice.events_received()
        self.link.close()
        self.receiver = self.sender = None
        self.out = None
        asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            if self.sctp is not None:
                await self.sctp.stop()
        with contextlib.suppress(Exception):
            await self.dtls.stop()
