"""Everything the media shard takes from aiortc and pylibsrtp, behind one small interface.

aiortc brings DTLS (``RTCDtlsTransport``) and SCTP (``RTCSctpTransport``); pylibsrtp brings the
SRTP sessions DTLS keys. hubbub drives them without aiortc's ICE or RTP stacks, which means using
members aiortc keeps private: the DTLS role, the SRTP sessions, SCTP's association state,
outbound queue, transmit step and chunk send primitive, and libsrtp's functions from pylibsrtp's
binding (so a forwarded packet is protected in a buffer kept per subscriber, without the
per-call allocations of ``Session.protect``). No other module imports aiortc, aioice or
pylibsrtp; ``contract_problems`` lists what the pinned versions no longer provide, and a test
fails loudly on it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from importlib.metadata import version
from typing import Any, cast

import aiortc.rtcsctptransport as _sctp
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcsctptransport import (
    Chunk,
    DataChunk,
    ForwardTsnChunk,
    RTCSctpCapabilities,
    RTCSctpTransport,
    SackChunk,
)
from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib


__all__ = [
    "PINNED",
    "Certificate",
    "DtlsEndpoint",
    "IceLink",
    "SctpAssociation",
    "SrtpReceiver",
    "SrtpSender",
    "certificate_fingerprints",
    "contract_problems",
    "new_certificate",
]

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
"""The versions whose private members this module relies on (pyproject pins them exactly)."""

Certificate = RTCCertificate

BUFFER = 2048
MAX_TRAILER = 144
"""Room libsrtp may append (tag and MKI); longer packets are refused, never overrun."""
MAX_PACKET = BUFFER - MAX_TRAILER


def new_certificate() -> RTCCertificate:
    return RTCCertificate.generateCertificate()


def certificate_fingerprints(certificate: RTCCertificate) -> list[tuple[str, str]]:
    return [(f.algorithm, f.value) for f in certificate.getFingerprints()]


class IceLink:
    """What ``RTCDtlsTransport`` sees as its ICE transport: a bounded queue and a send hook.

    Args:
        send: sends one packet to the peer.
        role: the ICE role (a shard is ICE-lite, so ``controlled``; its clients control).
        limit: DTLS records kept until the handshake reads them; more are dropped.
    """

    state = "completed"

    def __init__(self, send: Callable[[bytes], None], role: str = "controlled",
                 limit: int = 64) -> None:
        self.role = role
        self._send_packet = send
        self._limit = limit
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def feed(self, data: bytes) -> None:
        if self._closed or len(self._queue) >= self._limit:
            return
        self._queue.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _recv(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise ConnectionError("transport closed")
            if self._loop is None:  # kept: each lookup makes a getpid() system call
                self._loop = asyncio.get_running_loop()
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._queue.popleft()

    async def _send(self, data: bytes) -> None:
        self._send_packet(data)

    def close(self) -> None:
        self._closed = True
        self._queue.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


Process = Callable[[bytes | bytearray], bytes | None]


def _processor(session: Session, func: Any) -> Process:
    """One libsrtp operation on ``session`` working in a buffer of its own: the packet is
    copied in, transformed in place, and copied out (``None`` when libsrtp refuses it)."""
    ctx = session._srtp[0]
    cbuf = ffi.new("char[]", BUFFER)
    buf = ffi.buffer(cbuf)
    size = ffi.new("int *")

    # The session rides along as a default so the context lives as long as the function does.
    def run(packet: bytes | bytearray, _owner: Session = session) -> bytes | None:
        n = len(packet)
        if n > MAX_PACKET:
            return None
        buf[0:n] = packet
        size[0] = n
        if func(ctx, cbuf, size):
            return None
        out: bytes = buf[0:size[0]]
        return out

    return run


class SrtpSender:
    """Protects outgoing packets; ``None`` means libsrtp refused (e.g. a replayed index)."""

    __slots__ = ("protect", "protect_rtcp")

    def __init__(self, session: Session) -> None:
        self.protect = _processor(session, lib.srtp_protect)
        self.protect_rtcp = _processor(session, lib.srtp_protect_rtcp)


class SrtpReceiver:
    """Authenticates and decrypts incoming packets; ``None`` for anything that fails."""

    __slots__ = ("unprotect", "unprotect_rtcp")

    def __init__(self, session: Session) -> None:
        self.unprotect = _processor(session, lib.srtp_unprotect)
        self.unprotect_rtcp = _processor(session, lib.srtp_unprotect_rtcp)


class DtlsEndpoint:
    """aiortc's DTLS over an ``IceLink``; after the handshake, the SRTP keys it exported.

    Args:
        link: the packet path to the peer.
        certificate: this side's certificate.
        role: ``"client"`` or ``"server"``.
    """

    def __init__(self, link: IceLink, certificate: RTCCertificate, role: str) -> None:
        self.dtls = RTCDtlsTransport(link, [certificate])  # type: ignore[arg-type]
        self.dtls._set_role(role)
        self.sender: SrtpSender | None = None
        self.receiver: SrtpReceiver | None = None

    def set_role(self, role: str) -> None:
        self.dtls._set_role(role)

    @property
    def state(self) -> str:
        return str(self.dtls.state)

    async def start(self, fingerprints: list[tuple[str, str]], remote_role: str = "auto") -> bool:
        """Run the handshake against a peer with one of ``fingerprints``; True when connected.

        aiortc raises assorted errors on hostile handshakes: they all mean "not connected".
        """
        prints = [RTCDtlsFingerprint(a, v) for a, v in fingerprints]
        try:
            await self.dtls.start(RTCDtlsParameters(fingerprints=prints, role=remote_role))
        except Exception:
            return False
        if self.dtls.state != "connected":
            return False
        self.sender = SrtpSender(self.dtls._tx_srtp)
        self.receiver = SrtpReceiver(self.dtls._rx_srtp)
        return True

    async def stop(self) -> None:
        self.sender = self.receiver = None
        await self.dtls.stop()


OnMessage = Callable[[int, int, bytes], Awaitable[None]]

SCTP_HEADER = 12
SCTP_PACKET_LIMIT = SCTP_HEADER + 16 + _sctp.USERDATA_MAX_LENGTH
"""Largest SCTP packet sent: what aiortc sends for one full DATA chunk, so a bundle never
needs a bigger DTLS record or datagram than an unbundled packet does."""
_COMMON = struct.Struct("!HHL")
_CHECKSUM = struct.Struct("<L")
_ZERO = bytes(4)
_crc32c = cast(Callable[[bytes], int], getattr(_sctp, "crc32c", None))  # what aiortc checks


def _run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (aiortc's transmit step once its chunk sends are
    buffered, DTLS's send over an ``IceLink``) to its end, right now."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("an SCTP send step suspended")


class SctpAssociation(RTCSctpTransport):
    """aiortc's SCTP association over a ``DtlsEndpoint``, with chosen stream counts, that
    sends at most once per event-loop iteration.

    aiortc transmits after each queued message and puts every chunk in a packet of its own;
    fanning one message out to many subscribers thus costs a DTLS record, a datagram and a SACK
    back per subscriber and message. Here the transmit step runs once per loop iteration, and
    the DATA, SACK and FORWARD TSN chunks it (and the receive path) produce go out bundled
    (RFC 4960 section 6.10: control chunks first, then DATA in TSN order, packets no bigger
    than ``SCTP_PACKET_LIMIT``). aiortc keeps its congestion window, flight size,
    retransmission, T3 and PR-SCTP bookkeeping: only the moment and the packing of sends
    change. Other chunks (handshake, RECONFIG, ABORT, SHUTDOWN, HEARTBEAT) go out alone, after
    what was queued before them.

    Args:
        endpoint: the DTLS endpoint it runs over (connected).
        port: the SCTP port (5000 for WebRTC).
        streams: outbound streams offered and inbound streams accepted.
        on_message: called with (stream id, payload protocol id, data) of each message.
    """

    def __init__(self, endpoint: DtlsEndpoint, port: int, streams: int,
                 on_message: OnMessage) -> None:
        super().__init__(endpoint.dtls, port=port)
        self._on_message = on_message
        self._outbound_streams_count = streams
        self._inbound_streams_max = streams
        self._pending_sack: bytes | None = None
        self._pending_control: list[bytes] = []
        self._pending_data: list[bytes] = []
        self._transmit_due = False
        self._flush_handle: asyncio.Handle | None = None
        # Looked up once: asyncio's lookup makes a getpid() system call each time.
        self._flush_loop = asyncio.get_running_loop()
        self.packets_sent = 0
        """Bundled packets sent (for tests and stats)."""
        self.chunks_sent = 0
        """Chunks sent in bundled packets."""

    async def open(self, max_message_size: int, port: int) -> None:
        await self.start(RTCSctpCapabilities(maxMessageSize=max_message_size), port)

    async def _receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        await self._on_message(stream_id, pp_id, data)

    @property
    def established(self) -> bool:
        return bool(self._association_state == self.State.ESTABLISHED)

    @property
    def queued(self) -> int:
        """Chunks waiting to be sent (the association's own queue has no bound)."""
        return len(self._outbound_queue)

    async def send_message(self, stream_id: int, pp_id: int, data: bytes,
                           expiry: float | None, max_retransmits: int | None,
                           ordered: bool) -> None:
        await self._send(stream_id, pp_id, data, expiry=expiry,
                         max_retransmits=max_retransmits, ordered=ordered)

    def reset_stream(self, stream_id: int) -> None:
        """Reset our outgoing stream (RFC 6525), as closing a data channel does."""
        if self.established and stream_id not in self._reconfig_queue:
            self._reconfig_queue.append(stream_id)
            asyncio.ensure_future(self._transmit_reconfig())

    # ------------------------------------------------------------ bundling
    async def _transmit(self) -> None:
        # Every caller (a queued message, a SACK, T3) only needs a transmit step to follow.
        self._transmit_due = True
        self._schedule_flush()

    async def _send_chunk(self, chunk: Chunk) -> None:
        if isinstance(chunk, DataChunk):
            self._pending_data.append(bytes(chunk))
        elif isinstance(chunk, SackChunk):
            self._pending_sack = bytes(chunk)  # a later SACK says all an earlier one did
        elif isinstance(chunk, ForwardTsnChunk):
            self._pending_control.append(bytes(chunk))
        else:
            # What was queued before goes first, as it would have without bundling (DATA
            # ahead of a RECONFIG that names its last TSN, say).
            self._drain()
            await super()._send_chunk(chunk)
            return
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self._flush_loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._association_state == self.State.CLOSED:
            self._transmit_due = False
            self._pending_sack = None
            self._pending_control.clear()
            self._pending_data.clear()
            return
        self._drain()

    def _drain(self) -> None:
        """Run a due transmit step, then send everything buffered."""
        if self._transmit_due:
            self._transmit_due = False
            _run_now(super()._transmit())
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Send the buffered chunks as few packets as the size limit allows."""
        control = self._pending_control
        if self._pending_sack is not None:
            control.insert(0, self._pending_sack)
            self._pending_sack = None
        data = self._pending_data
        if not control and not data:
            return
        self._pending_control, self._pending_data = [], []
        header = _COMMON.pack(self._local_port, self._remote_port or 0,
                              self._remote_verification_tag)
        send = self.transport._send_data
        batch: list[bytes] = []
        size = SCTP_HEADER
        try:
            for chunk in (*control, *data):
                if batch and size + len(chunk) > SCTP_PACKET_LIMIT:
                    _run_now(send(self._packet(header, batch)))
                    batch, size = [], SCTP_HEADER
                batch.append(chunk)
                size += len(chunk)
            _run_now(send(self._packet(header, batch)))
        except ConnectionError:
            # DTLS is gone: the association ends with it, as aiortc's own sends would.
            return

    def _packet(self, header: bytes, chunks: list[bytes]) -> bytes:
        body = b"".join(chunks)
        self.packets_sent += 1
        self.chunks_sent += len(chunks)
        checksum = _crc32c(header + _ZERO + body)
        return header + _CHECKSUM.pack(checksum) + body


def contract_problems() -> list[str]:
    """What this module relies on and the installed aiortc/pylibsrtp no longer provide."""
    problems = [f"{name} {version(name)} installed, {want} pinned"
                for name, want in PINNED.items() if version(name) != want]
    for name in ("_set_role", "_recv_next", "_write_ssl", "_send_data", "start", "stop"):
        if not callable(getattr(RTCDtlsTransport, name, None)):
            problems.append(f"RTCDtlsTransport.{name}")
    dtls_init = RTCDtlsTransport.__init__.__code__.co_names
    problems += [f"RTCDtlsTransport.{a}" for a in ("_rx_srtp", "_tx_srtp", "_data_receiver")
                 if a not in dtls_init]
    for name in ("_receive", "_send", "_send_chunk", "_transmit", "_set_state",
                 "_transmit_reconfig", "start", "stop"):
        if not callable(getattr(RTCSctpTransport, name, None)):
            problems.append(f"RTCSctpTransport.{name}")
    sctp_init = RTCSctpTransport.__init__.__code__.co_names
    problems += [f"RTCSctpTransport.{a}" for a in (
        "_outbound_queue", "_association_state", "_outbound_streams_count",
        "_inbound_streams_max", "_reconfig_queue", "_local_port", "_remote_port",
        "_remote_verification_tag") if a not in sctp_init]
    problems += _bundling_problems()
    if not hasattr(RTCSctpTransport, "State") or not hasattr(RTCSctpTransport.State,
                                                             "ESTABLISHED"):
        problems.append("RTCSctpTransport.State.ESTABLISHED")
    if RTCSctpTransport._send.__code__.co_varnames[:7] != (
            "self", "stream_id", "pp_id", "user_data", "expiry", "max_retransmits", "ordered"):
        problems.append("RTCSctpTransport._send signature")
    session_init = Session.__init__.__code__.co_names
    if "_srtp" not in session_init:
        problems.append("pylibsrtp.Session._srtp")
    for func in ("srtp_protect", "srtp_protect_rtcp", "srtp_unprotect", "srtp_unprotect_rtcp"):
        if not hasattr(lib, func):
            problems.append(f"libsrtp {func}")
    return problems


def _bundling_problems() -> list[str]:
    """What ``SctpAssociation``'s bundling relies on: chunk types and layouts, and that every
    send of aiortc's association goes through ``_send_chunk`` and its transmit step through
    ``_transmit`` (bundling would be bypassed otherwise), and that neither suspends."""
    problems = []
    for cls, kind in ((DataChunk, 0), (SackChunk, 3), (ForwardTsnChunk, 192)):
        if getattr(cls, "type", None) != kind:
            problems.append(f"aiortc {cls.__name__}.type")
    if not callable(getattr(_sctp, "crc32c", None)) or not isinstance(
            getattr(_sctp, "USERDATA_MAX_LENGTH", None), int):
        problems.append("aiortc rtcsctptransport.crc32c/USERDATA_MAX_LENGTH")
    names = RTCSctpTransport._send_chunk.__code__.co_names
    if "serialize_packet" not in names or "_send_data" not in names:
        problems.append("RTCSctpTransport._send_chunk sends one packet via _send_data")
    names = RTCSctpTransport._transmit.__code__.co_names
    if "_send_chunk" not in names or "sleep" in names or "_send_data" in names:
        problems.append("RTCSctpTransport._transmit sends only through _send_chunk")
    for name in ("_send", "_receive_sack_chunk", "_t3_expired"):
        if "_transmit" not in getattr(RTCSctpTransport, name).__code__.co_names:
            problems.append(f"RTCSctpTransport.{name} transmits through _transmit")
    for name in ("_send_sack", "_send_reconfig_param", "_abort", "_init"):
        if "_send_chunk" not in getattr(RTCSctpTransport, name).__code__.co_names:
            problems.append(f"RTCSctpTransport.{name} sends through _send_chunk")
    dtls_send = RTCDtlsTransport._send_data.__code__.co_names
    if "_write_ssl" not in dtls_send:
        problems.append("RTCDtlsTransport._send_data")
    return problems
