"""The shard's SCTP association: aiortc's ``RTCSctpTransport`` over a ``DtlsEndpoint``, sending
bundled once per loop iteration, with short paths for what a relay does all the time.

It uses members aiortc keeps private (association state, queues, timers, per-chunk
bookkeeping, the transmit step and chunk send primitive); ``contract_problems`` lists what the
pinned aiortc no longer provides, and a test fails loudly on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, cast

import aiortc.rtcsctptransport as _sctp
from aiortc.rtcsctptransport import (
    Chunk,
    DataChunk,
    ForwardTsnChunk,
    RTCSctpCapabilities,
    RTCSctpTransport,
    SackChunk,
)

from shards.media.stack import DtlsEndpoint, drive, run_now


__all__ = ["SACK_DELAY", "SCTP_PACKET_LIMIT", "OnMessage", "SctpAssociation",
           "contract_problems"]

log = logging.getLogger("hubbub.media.sctp")

OnMessage = Callable[[int, int, bytes], Coroutine[Any, Any, None] | None]

SCTP_HEADER = 12
SCTP_PACKET_LIMIT = SCTP_HEADER + 16 + _sctp.USERDATA_MAX_LENGTH
"""Largest SCTP packet sent: what aiortc sends for one full DATA chunk, so a bundle never
needs a bigger DTLS record or datagram than an unbundled packet does."""
SACK_DELAY = 0.2
"""Seconds a SACK may wait for a second packet (RFC 4960 section 6.2: at most 500 ms)."""
TICK = 0.1
"""Seconds between the checks of delayed SACKs and T3 deadlines: one timer per event loop
serves every association, so timers wake a shard at most ten times a second."""
_COMMON = struct.Struct("!HHL")
_CHECKSUM = struct.Struct("<L")
_ZERO = bytes(4)
_crc32c = cast(Callable[[bytes], int], getattr(_sctp, "crc32c", None))  # what aiortc checks
_USERDATA = _sctp.USERDATA_MAX_LENGTH
_UNORDERED = _sctp.SCTP_DATA_UNORDERED
_FIRST = _sctp.SCTP_DATA_FIRST_FRAG
_LAST = _sctp.SCTP_DATA_LAST_FRAG
_TSN_MODULO = _sctp.SCTP_TSN_MODULO
_HALF = _TSN_MODULO >> 1
_CHUNK_HEADER = struct.Struct("!BBH")
_SACK_BODY = struct.Struct("!LLHH")
_DATA_BODY = struct.Struct("!LHHL")
_SACK_PACKET = SCTP_HEADER + 16
"""An SCTP packet holding one SACK without gap blocks or duplicates."""
_DATA_HEADER = 16
_DATA_CHUNK = struct.Struct("!BBHLHHL")
_SACK_CHUNK = struct.Struct("!BBHLLHH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
"""Padding to the next 4-byte boundary, by length % 4."""


class _Chunk(DataChunk):
    """A DATA chunk serialised once, when queued (its TSN and header never change), with
    aiortc's initial bookkeeping as class defaults: a relayed message costs fewer writes."""

    wire: bytes
    _abandoned = False
    _acked = False
    _in_flight = False
    _misses = 0
    _retransmit = False
    _sent_count = 0
    _sent_time: float | None = None

    def __bytes__(self) -> bytes:
        return self.wire


_T3_RUNNING = cast(asyncio.TimerHandle, True)
"""What aiortc finds in ``_t3_handle`` while T3 runs (it only tests it for truth)."""
_new_chunk = object.__new__
_CHUNK_STATE = ("_abandoned", "_acked", "_book_size", "_expiry", "_in_flight",
                "_max_retransmits", "_misses", "_retransmit", "_sent_count", "_sent_time")
"""The bookkeeping aiortc's ``_send`` gives each DATA chunk (``queue_message`` does too)."""


class _Flusher:
    """The associations with something to send in this loop iteration, flushed one after
    the other at its end by one callback (not one per association)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: list[SctpAssociation] = []
        self._handle: asyncio.Handle | None = None

    def add(self, association: SctpAssociation) -> None:
        self._queued.append(association)
        if self._handle is None:
            self._handle = self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        queued, self._queued = self._queued, []
        for association in queued:
            try:
                association._flush()
            except Exception:  # one association's failure must not stall the others
                log.warning("SCTP flush failed", exc_info=True)


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = \
    weakref.WeakKeyDictionary()


class _Ticker:
    """Every ``TICK``, the associations with a delayed SACK or a running T3 check them; the
    timer stops while none has."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[SctpAssociation] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, association: SctpAssociation) -> None:
        self._watched.add(association)
        if self._handle is None:
            self._handle = self._loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        for association in list(self._watched):
            try:
                keep = association._on_tick(now)
            except Exception:
                log.warning("SCTP timer check failed", exc_info=True)
                keep = False
            if not keep:
                self._watched.discard(association)
        if self._watched:
            self._handle = self._loop.call_later(TICK, self._tick)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = \
    weakref.WeakKeyDictionary()


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

    Per relayed message, the rest of aiortc's per-packet cost goes too: messages are queued
    without a coroutine each (``queue_message``); SACKs for received DATA are delayed as RFC
    4960 section 6.2 allows (one for every second packet, within ``SACK_DELAY``, at once on a
    gap or a duplicate, and riding along with DATA whenever some goes out); the T3 timer is
    checked every ``TICK`` by one timer shared by all associations (a restart only moves a
    deadline), as are delayed SACKs; and a transmit step that has nothing to send is skipped.

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
        self._send_record = endpoint.send_record
        self._outbound_streams_count = streams
        self._inbound_streams_max = streams
        self._pending_sack: bytes | None = None
        self._pending_control: list[bytes] = []
        self._pending_data: list[bytes] = []
        self._transmit_due = False
        self._may_retransmit = False
        """Chunks may be marked for retransmission (a SACK with gaps, or T3 expired)."""
        self._flush_queued = False
        self._flushing = False
        # Looked up once: asyncio's lookup makes a getpid() system call each time.
        self._flush_loop = loop = asyncio.get_running_loop()
        self._flusher = _flushers.get(loop) or _flushers.setdefault(loop, _Flusher(loop))
        self._ticker = _tickers.get(loop) or _tickers.setdefault(loop, _Ticker(loop))
        self._t3_deadline = 0.0
        self._sack_packets = 0
        """Packets with DATA received since the last SACK."""
        self._sack_since: float | None = None
        """When the first packet the next SACK acknowledges arrived."""
        self._sack_now = False
        self.packets_sent = 0
        """Bundled packets sent (for tests and stats)."""
        self.chunks_sent = 0
        """Chunks sent in bundled packets."""

    async def open(self, max_message_size: int, port: int) -> None:
        await self.start(RTCSctpCapabilities(maxMessageSize=max_message_size), port)

    async def _receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        done = self._on_message(stream_id, pp_id, data)
        if done is not None:
            await done

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
        self.queue_message(stream_id, pp_id, data, expiry, max_retransmits, ordered)

    def queue_message(self, stream_id: int, pp_id: int, data: bytes,
                      expiry: float | None, max_retransmits: int | None,
                      ordered: bool) -> None:
        """Queue one message, fragmented and numbered as aiortc's ``_send`` does; it goes
        out with everything else queued in this loop iteration."""
        if ordered:
            stream_seq = self._outbound_stream_seq.get(stream_id, 0)
            self._outbound_stream_seq[stream_id] = (stream_seq + 1) & 0xFFFF
            flags = 0
        else:
            stream_seq = 0
            flags = _UNORDERED
        fragments = math.ceil(len(data) / _USERDATA)
        queue = self._outbound_queue
        tsn = self._local_tsn
        for fragment in range(fragments):
            chunk = _new_chunk(_Chunk)
            chunk.flags = flags | (_FIRST if fragment == 0 else 0) \
                | (_LAST if fragment == fragments - 1 else 0)
            chunk.tsn = tsn
            chunk.stream_id = stream_id
            chunk.stream_seq = stream_seq
            chunk.protocol = pp_id
            chunk.user_data = part = data if fragments == 1 else \
                data[fragment * _USERDATA:(fragment + 1) * _USERDATA]
            chunk.wire = _DATA_CHUNK.pack(0, chunk.flags, _DATA_HEADER + len(part), tsn,
                                          stream_id, stream_seq, pp_id) \
                + part + _PAD[len(part) & 3]
            chunk._book_size = len(part)
            chunk._expiry = expiry
            chunk._max_retransmits = max_retransmits
            tsn = (tsn + 1) % _TSN_MODULO
            queue.append(chunk)
        self._local_tsn = tsn
        self._transmit_due = True
        self._schedule_flush()

    def offer(self, stream_id: int, pp_id: int, data: bytes, expiry: float | None,
              max_retransmits: int | None, ordered: bool, limit: int) -> bool:
        """``queue_message`` unless the association is not up or ``limit`` chunks already
        wait; True when queued."""
        if self._association_state != self.State.ESTABLISHED \
                or len(self._outbound_queue) >= limit:
            return False
        self.queue_message(stream_id, pp_id, data, expiry, max_retransmits, ordered)
        return True

    def reset_stream(self, stream_id: int) -> None:
        """Reset our outgoing stream (RFC 6525), as closing a data channel does."""
        if self.established and stream_id not in self._reconfig_queue:
            self._reconfig_queue.append(stream_id)
            asyncio.ensure_future(self._transmit_reconfig())

    # ------------------------------------------------------------ timers
    def _t3_start(self) -> None:
        self._t3_handle = _T3_RUNNING
        self._t3_deadline = self._flush_loop.time() + self._rto
        self._ticker.watch(self)

    _t3_restart = _t3_start

    def _t3_cancel(self) -> None:
        self._t3_handle = None

    def _on_tick(self, now: float) -> bool:
        """Send a SACK delayed long enough, expire T3 past its deadline; True while either
        still runs."""
        if self._association_state == self.State.CLOSED:
            return False
        if self._sack_needed and self._sack_since is not None \
                and now - self._sack_since >= SACK_DELAY - TICK:
            self._sack_now = True
            drive(self._send_sack())
        if self._t3_handle is not None and now >= self._t3_deadline:
            self._may_retransmit = True
            self._t3_expired()
        return self._t3_handle is not None or self._sack_needed

    # ---------------------------------------------------------- receiving
    def receive_packet(self, data: bytes) -> None:
        """One SCTP packet from DTLS (``DtlsEndpoint`` calls this instead of aiortc's
        ``_handle_data`` coroutine). Never raises: a packet that breaks something is
        dropped."""
        try:
            if self._fast(data):
                return
        except Exception:
            log.debug("SCTP packet dropped", exc_info=True)
            return
        drive(super()._handle_data(data))

    async def _handle_data(self, data: bytes) -> None:
        if not self._fast(data):
            await super()._handle_data(data)

    def _fast(self, data: bytes) -> bool:
        """The two packets a relay gets all the time, a lone SACK without gaps and a lone
        DATA chunk with the next TSN and a whole message, handled at once; False (nothing
        done) for anything else, which is aiortc's (as is anything while PR-SCTP, fast
        recovery or a stream reset is under way)."""
        n = len(data)
        if n < _SACK_PACKET or self._association_state != self.State.ESTABLISHED \
                or _COMMON.unpack_from(data)[2] != self._local_verification_tag:
            return False
        kind, flags, length = _CHUNK_HEADER.unpack_from(data, SCTP_HEADER)
        if SCTP_HEADER + length + (-length & 3) != n \
                or _CHECKSUM.unpack_from(data, 8)[0] != _crc32c(data[:8] + _ZERO
                                                              + data[SCTP_HEADER:]):
            return False
        if kind == SackChunk.type:
            return length == 16 and self._sack_fast(data)
        return kind == DataChunk.type and length > _DATA_HEADER \
            and self._data_fast(data, flags, length)

    def _sack_fast(self, data: bytes) -> bool:
        """Apply a SACK without gap blocks or duplicates that acknowledges new data, as RFC
        4960 sections 6.2.1 and 7.2 say; False (nothing done) for any other case."""
        cumulative, _, gaps, duplicates = _SACK_BODY.unpack_from(data, SCTP_HEADER + 4)
        sent = self._sent_queue
        if gaps or duplicates or not sent or self._fast_recovery_exit is not None \
                or self._forward_tsn_chunk is not None or self._forward_tsn_streams \
                or self._advanced_peer_ack_tsn != self._last_sacked_tsn \
                or self._data_channel_queue \
                or not 0 <= (cumulative - sent[0].tsn) % _TSN_MODULO < _HALF \
                or not 0 <= (sent[-1].tsn - cumulative) % _TSN_MODULO < _HALF:
            return False
        now = time.time()
        filled = self._flight_size >= self._cwnd
        done = acked = 0
        while sent and (cumulative - sent[0].tsn) % _TSN_MODULO < _HALF:
            chunk = sent.popleft()
            done += 1
            if not chunk._acked:
                acked += chunk._book_size
            if chunk._in_flight:
                chunk._in_flight = False
                self._flight_size -= chunk._book_size
            if done == 1 and chunk._sent_count == 1 and chunk._sent_time is not None:
                self._update_rto(now - chunk._sent_time)  # RFC 4960 6.3.1 (Karn's rule)
        self._last_sacked_tsn = self._advanced_peer_ack_tsn = cumulative
        if filled:  # RFC 4960 7.2.1 and 7.2.2: the window grows only while it is used up
            if self._cwnd <= self._ssthresh:
                self._cwnd += min(acked, _USERDATA)
            else:
                self._partial_bytes_acked += acked
                if self._partial_bytes_acked >= self._cwnd:
                    self._partial_bytes_acked -= self._cwnd
                    self._cwnd += _USERDATA
        if not sent:
            self._t3_cancel()
        else:
            self._t3_restart()
            if sent[0]._abandoned:
                self._update_advanced_peer_ack_point()
        if self._outbound_queue or self._forward_tsn_chunk is not None:
            self._transmit_due = True
            self._schedule_flush()
        return True

    def _data_fast(self, data: bytes, flags: int, length: int) -> bool:
        """Deliver a packet holding one DATA chunk with the next TSN and a whole message (for
        an ordered stream, its next one); False (nothing done) for any other case."""
        last = self._last_received_tsn
        tsn, stream_id, stream_seq, pp_id = _DATA_BODY.unpack_from(data, SCTP_HEADER + 4)
        if flags & (_FIRST | _LAST) != _FIRST | _LAST or last is None \
                or tsn != (last + 1) % _TSN_MODULO or self._sack_misordered \
                or self._sack_duplicates or self._reconfig_deferred is not None:
            return False
        stream = self._inbound_streams.get(stream_id)
        if stream is None:
            stream = self._get_inbound_stream(stream_id)
        if stream.reassembly:
            return False
        if not flags & _UNORDERED:
            if stream_seq != stream.sequence_number:
                return False
            stream.sequence_number = (stream_seq + 1) & 0xFFFF
        self._last_received_tsn = tsn
        self._sack_needed = True
        done = self._on_message(stream_id, pp_id,
                                data[SCTP_HEADER + _DATA_HEADER:SCTP_HEADER + length])
        if done is not None:
            drive(done)
        if self._sack_needed and not self._sack():
            drive(RTCSctpTransport._send_sack(self))
        return True

    # -------------------------------------------------------------- SACKs
    async def _send_sack(self) -> None:
        if not self._sack():
            await super()._send_sack()

    def _sack(self) -> bool:
        """Delay the SACK due (RFC 4960 section 6.2: one for every second packet with DATA,
        within ``SACK_DELAY``, at once on a gap or a duplicate) or queue it; False when
        aiortc is to build it (gap blocks or duplicates to report)."""
        self._sack_packets += 1
        if self._sack_packets < 2 and not self._sack_now and not self._sack_misordered \
                and not self._sack_duplicates:
            if self._sack_since is None:
                self._sack_since = self._flush_loop.time()
                self._ticker.watch(self)
            return True
        self._sack_packets = 0
        self._sack_now = False
        self._sack_since = None
        if self._sack_misordered or self._sack_duplicates:
            return False
        # No gaps, no duplicates: the SACK is its fixed fields (RFC 4960 section 3.3.4).
        self._pending_sack = _SACK_CHUNK.pack(SackChunk.type, 0, 16, self._last_received_tsn,
                                              max(0, self._advertised_rwnd), 0, 0)
        self._sack_needed = False
        self._schedule_flush()
        return True

    async def _receive_forward_tsn_chunk(self, chunk: ForwardTsnChunk) -> None:
        self._sack_now = True  # the sender waits for this to move its ack point
        await super()._receive_forward_tsn_chunk(chunk)

    async def _receive_sack_chunk(self, chunk: SackChunk) -> None:
        if chunk.gaps:
            self._may_retransmit = True
        await super()._receive_sack_chunk(chunk)

    # ------------------------------------------------------------ bundling
    async def _transmit(self) -> None:
        # Every caller (a queued message, a SACK, T3) only needs a transmit step to follow,
        # and only when there is something it could send.
        if self._outbound_queue or self._forward_tsn_chunk is not None \
                or self._may_retransmit:
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
        if not self._flush_queued and not self._flushing:
            self._flush_queued = True
            self._flusher.add(self)

    def _flush(self) -> None:
        self._flush_queued = False
        if self._association_state == self.State.CLOSED:
            self._transmit_due = False
            self._pending_sack = None
            self._pending_control.clear()
            self._pending_data.clear()
            return
        self._drain()

    def _drain(self) -> None:
        """Run a due transmit step, then send everything buffered."""
        self._flushing = True
        try:
            if self._transmit_due:
                self._transmit_due = False
                if self._forward_tsn_chunk is not None or self._may_retransmit:
                    run_now(super()._transmit())
                    if self._may_retransmit:
                        self._may_retransmit = any(c._retransmit for c in self._sent_queue)
                elif self._outbound_queue:
                    self._transmit_new()
            if self._pending_data and self._sack_needed and self._pending_sack is None:
                self._sack_now = True  # a delayed SACK rides along with the DATA
                run_now(self._send_sack())
            self._flush_pending()
        finally:
            self._flushing = False

    def _transmit_new(self) -> None:
        """aiortc's transmit step when nothing is to be resent or forwarded past: new DATA
        while the congestion window and the burst limit (RFC 4960 sections 6.1 and 7.2.4)
        allow, one clock reading for all of it."""
        burst = (2 if self._fast_recovery_exit is not None else 4) * _USERDATA
        limit = min(self._flight_size + burst, self._cwnd)
        outbound, sent, pending = self._outbound_queue, self._sent_queue, self._pending_data
        now = time.time()
        while outbound and self._flight_size < limit:
            chunk = outbound.popleft()
            sent.append(chunk)
            if not chunk._in_flight:
                chunk._in_flight = True
                self._flight_size += chunk._book_size
            chunk._sent_count += 1
            chunk._sent_time = now
            pending.append(bytes(chunk))
        if sent and not self._t3_handle:
            self._t3_start()

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
        send = self._send_record
        batch: list[bytes] = []
        size = SCTP_HEADER
        try:
            for chunk in (*control, *data):
                if batch and size + len(chunk) > SCTP_PACKET_LIMIT:
                    send(self._packet(header, batch))
                    batch, size = [], SCTP_HEADER
                batch.append(chunk)
                size += len(chunk)
            send(self._packet(header, batch))
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
    """What this module relies on and the installed aiortc no longer provides."""
    problems = []
    for name in ("_receive", "_send", "_send_chunk", "_transmit", "_set_state",
                 "_transmit_reconfig", "start", "stop", "_handle_data", "_send_sack",
                 "_receive_sack_chunk", "_receive_forward_tsn_chunk", "_t3_start",
                 "_t3_restart", "_t3_cancel", "_t3_expired", "_update_rto",
                 "_update_advanced_peer_ack_point", "_get_inbound_stream"):
        if not callable(getattr(RTCSctpTransport, name, None)):
            problems.append(f"RTCSctpTransport.{name}")
    sctp_init = RTCSctpTransport.__init__.__code__.co_names
    problems += [f"RTCSctpTransport.{a}" for a in (
        "_association_state", "_outbound_streams_count", "_inbound_streams_max",
        "_reconfig_queue", "_local_port", "_remote_port", "_remote_verification_tag",
        *_SCTP_STATE) if a not in sctp_init]
    if "_ssthresh" not in RTCSctpTransport._receive_chunk.__code__.co_names:
        problems.append("RTCSctpTransport._ssthresh")
    if not hasattr(RTCSctpTransport, "State") or not hasattr(RTCSctpTransport.State,
                                                             "ESTABLISHED"):
        problems.append("RTCSctpTransport.State.ESTABLISHED")
    if RTCSctpTransport._send.__code__.co_varnames[:7] != (
            "self", "stream_id", "pp_id", "user_data", "expiry", "max_retransmits", "ordered"):
        problems.append("RTCSctpTransport._send signature")
    send_names = set(RTCSctpTransport._send.__code__.co_names)
    if not set(_CHUNK_STATE) <= send_names or {n for n in send_names if n.startswith("_")} \
            - set(_CHUNK_STATE) - {"_local_tsn", "_outbound_queue", "_outbound_stream_seq",
                                   "_transmit"}:
        problems.append("RTCSctpTransport._send chunk bookkeeping")
    for name, want in (("SCTP_DATA_UNORDERED", 4), ("SCTP_DATA_FIRST_FRAG", 2),
                       ("SCTP_DATA_LAST_FRAG", 1), ("SCTP_TSN_MODULO", 1 << 32)):
        if getattr(_sctp, name, None) != want:
            problems.append(f"aiortc rtcsctptransport.{name}")
    return problems + _bundling_problems()


_SCTP_STATE = (
    "_sent_queue", "_outbound_queue", "_flight_size", "_cwnd", "_partial_bytes_acked",
    "_fast_recovery_exit", "_forward_tsn_chunk", "_forward_tsn_streams",
    "_advanced_peer_ack_tsn", "_last_sacked_tsn", "_data_channel_queue", "_last_received_tsn",
    "_sack_misordered", "_sack_duplicates", "_sack_needed", "_inbound_streams",
    "_reconfig_deferred", "_advertised_rwnd", "_local_tsn", "_outbound_stream_seq",
    "_local_verification_tag", "_t3_handle", "_rto")
"""aiortc association state the short receive and send paths read and write."""


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
    return problems
