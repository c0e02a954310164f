"""Relay pairs pumped through buffered asyncio protocols: the raw byte pump and the message bridge.

Each side is an ``asyncio.BufferedProtocol`` reading into one buffer shared by the process. A raw
TCP side's bytes go to the other socket unchanged (the default for TCP <-> TCP pairs unless
``RELAY_PUMP=splice``). On a pair with a WebSocket side each side's messages are streamed to the
other side in that side's framing as they arrive (``hubbub.wire.relay.reframe``); empty and text
messages are dropped. Backpressure runs both ways: when one side's write buffer passes its
high-water mark the other side stops reading, and a limited pair stops reading until its buckets
refill. What a pair holds counts against its own and the shard's memory budget (``budget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import cast

from hubbub.errors import FrameTooLarge, RemoteProtocolError
from hubbub.limits import TokenBucket
from hubbub.wire.relay.reframe import MAX_MESSAGE, Chunk, TcpDecoder, TcpEncoder, WsEncoder
from hubbub.wire.websocket import WsDecoder
from shards.relay import metrics
from shards.relay.budget import (
    PAIR_BUDGET,
    PRESSURE_FLOOR,
    RECHECK,
    STALL_CLOSE,
    ShardMemory,
)
from shards.relay.pair import MIN_BUDGET, Pair


__all__ = ["HIGH_WATER", "MAX_MESSAGE", "RAW_HIGH_WATER", "READ_BUFFER", "BufferedPair"]

log = logging.getLogger("hubbub.relay")

HIGH_WATER = 256 * 1024
RAW_HIGH_WATER = 1024 * 1024
"""Raw TCP sides move bulk bytes: a deeper write buffer means fewer pauses per byte."""
READ_BUFFER = 256 * 1024
IOV_MAX = 1024

# Every side of every pair reads into this one buffer. That is safe because the loop calls
# ``get_buffer`` and ``buffer_updated`` back to back and ``on_data`` consumes the bytes before
# returning: decoders copy what they keep, and writes either go to the socket at once or copy
# the part the kernel did not take. An idle pair therefore holds no read buffer at all.
_SHARED = memoryview(bytearray(READ_BUFFER))


class _Side(asyncio.BufferedProtocol):
    def __init__(self, pair: BufferedPair, idx: int, encoder: TcpEncoder | WsEncoder | None
                 ) -> None:
        self.pair = pair
        self.idx = idx
        self.encoder = encoder  # writes what the other side sends; None on a raw pair
        self.decoder: TcpDecoder | WsDecoder | None = None
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self._pauses: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.leftover = b""
        self._early: list[bytes] | None = []  # writes before the transport exists

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.transport.set_write_buffer_limits(
            high=RAW_HIGH_WATER if self.encoder is None else HIGH_WATER)
        early, self._early = self._early, None
        if early:
            self.transport.writelines(early)
        # Bytes read behind the first message go before anything this transport reads.
        leftover, self.leftover = self.leftover, b""
        if leftover:
            self.pair.on_data(self.idx, memoryview(leftover))
        # uvloop starts reading after connection_made returns, undoing a pause made in it.
        self.pair.loop.call_soon(self._apply_pause)

    def _apply_pause(self) -> None:
        if self._pauses and self.transport is not None:
            self.transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED

    def buffer_updated(self, nbytes: int) -> None:
        self.pair.on_data(self.idx, _SHARED[:nbytes])

    def eof_received(self) -> bool:
        self.pair.close("peer_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pair.close("peer_closed" if exc is None else "error")

    def pause_writing(self) -> None:
        self.pair.sides[1 - self.idx].pause("backpressure")

    def resume_writing(self) -> None:
        self.pair.sides[1 - self.idx].resume("backpressure")
        self.pair.update_held()

    # flow control
    def pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and not self.pair.closed:
            self.transport.resume_reading()

    def queued(self) -> int:
        """Bytes waiting to be written to this side."""
        if self.transport is not None:
            return self.transport.get_write_buffer_size()
        return sum(map(len, self._early or ()))

    def write(self, parts: list[Chunk]) -> None:
        """Write ``parts`` in order; they may be views of the shared read buffer.

        While the transport holds nothing queued the parts go straight to the socket in one
        ``writev``, so relaying copies nothing in user space; whatever the kernel does not take
        is copied into the transport's queue, which keeps the order and the backpressure.
        """
        if self._early is not None:
            self._early.append(b"".join(parts))
            return
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if self.fd >= 0 and not tr.get_write_buffer_size():
            try:
                sent = os.writev(self.fd, parts if len(parts) <= IOV_MAX else parts[:IOV_MAX])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.pair.close("error")
                return
            if sent:
                for k, part in enumerate(parts):
                    if sent < len(part):
                        parts = [memoryview(part)[sent:], *parts[k + 1:]]
                        break
                    sent -= len(part)
                else:
                    return
        tr.write(b"".join(parts))


class BufferedPair(Pair):
    """Two sockets pumped through asyncio transports: raw bytes (mode ``raw``, TCP <-> TCP) or,
    when a side speaks WebSocket, messages re-framed for the other side (mode ``bridge``).

    Args:
        socks: the two sockets (raw, never owned by a transport before).
        transports: ``"tcp"`` or ``"ws"`` for each socket.
        leftovers: bytes each socket sent behind its first message.
        framed: decode TCP sides as BytesCodec frames (False only for raw TCP pairs).
        memory: the shard's memory account (a private one by default).
    """

    mode = "bridge"

    def __init__(self, uuid: str, socks: tuple[socket.socket, socket.socket],
                 transports: tuple[str, str], leftovers: tuple[bytes, bytes],
                 addrs: tuple[str, str], ips: tuple[str, str], now: float, rate: float,
                 total: TokenBucket, on_closed: Callable[[Pair, str], None], framed: bool = True,
                 memory: ShardMemory | None = None) -> None:
        super().__init__(uuid, addrs, ips, now, rate, total, on_closed)
        self.loop = asyncio.get_running_loop()
        self.socks = socks
        self.memory = memory if memory is not None else ShardMemory()
        self.held = 0
        self._over_since: float | None = None
        self._recheck_timer: asyncio.TimerHandle | None = None
        framed = framed or "ws" in transports
        encoders = [(WsEncoder() if t == "ws" else TcpEncoder()) if framed else None
                    for t in transports]
        self.sides = (_Side(self, 0, encoders[0]), _Side(self, 1, encoders[1]))
        for side, other, t in zip(self.sides, reversed(self.sides), transports, strict=True):
            if other.encoder is not None:
                side.decoder = (WsDecoder(other.encoder, MAX_MESSAGE) if t == "ws"
                                else TcpDecoder(other.encoder, MAX_MESSAGE))
        for side, data in zip(self.sides, leftovers, strict=True):
            side.leftover = data
        self.mode = "bridge" if framed else "raw"

    async def start(self) -> None:
        try:
            for side, sock in zip(self.sides, self.socks, strict=True):
                await self.loop.connect_accepted_socket(lambda s=side: s, sock)  # type: ignore[misc]
        except OSError:
            self.close("error")

    def on_data(self, idx: int, data: memoryview) -> None:
        if self.closed:
            return
        src, dst = self.sides[idx], self.sides[1 - idx]
        now = self.loop.time()
        self.account(len(data), now)
        dec = src.decoder
        if dec is None:  # a raw pair
            dst.write([data])
        else:
            assert dst.encoder is not None
            try:
                dec.feed(data)
            except FrameTooLarge as exc:
                log.info("relay pair %s <-> %s closed: %s", *self.addrs, exc)
                self.close("too_large")
                return
            except RemoteProtocolError:
                self.close("protocol")
                return
            out = dst.encoder.out
            if out:
                dst.write(out)
                out.clear()
            if isinstance(dec, WsDecoder):
                self._reply(src, dec)
        if self.closed:
            return
        self._check_memory(src, now)
        if self.budget(now) < MIN_BUDGET:
            wait, bucket = self.wait_time(now)
            metrics.THROTTLED.labels(bucket).inc()
            src.pause("throttle")
            if src.timer is None:
                src.timer = self.loop.call_later(max(wait, 0.001), self._unthrottle, src)

    def _reply(self, side: _Side, dec: WsDecoder) -> None:
        """Pongs and the close echo a WebSocket side is owed; pongs are dropped while the side
        does not read what it is sent (only the latest ping needs an answer anyway)."""
        enc = side.encoder
        assert enc is not None
        pong, close = dec.pong, dec.close_reply
        dec.pong = dec.close_reply = None
        if pong is not None and side.queued() < HIGH_WATER:
            enc.control(pong)
        if close is not None:
            enc.control(close)
        if enc.out:
            side.write(enc.out)
            enc.out.clear()
        if dec.closed:
            self.close("peer_closed")

    # ---------------------------------------------------------------- memory
    def update_held(self) -> int:
        """Recount what the pair holds and report the change to the shard's account."""
        held = 0
        for side in self.sides:
            held += side.queued()
            if side.encoder is not None:
                held += side.encoder.held()
        if self.closed:
            held = 0
        self.memory.change(self.held, held)
        self.held = held
        return held

    def _over(self, held: int) -> bool:
        return held > PAIR_BUDGET or (held > PRESSURE_FLOOR and self.memory.over())

    def _check_memory(self, src: _Side, now: float) -> None:
        if not self._over(self.update_held()):
            return
        if self._over_since is None:
            self._over_since = now
        src.pause("memory")
        if self._recheck_timer is None:
            self._recheck_timer = self.loop.call_later(RECHECK, self._recheck)

    def _recheck(self) -> None:
        self._recheck_timer = None
        if self.closed:
            return
        held = self.update_held()
        if not self._over(held):
            self._over_since = None
            for side in self.sides:
                side.resume("memory")
            return
        if self._over_since is not None and self.loop.time() - self._over_since >= STALL_CLOSE:
            log.warning("relay pair %s <-> %s closed: it held %d bytes over its memory budget "
                        "for %.0f s", *self.addrs, held, STALL_CLOSE)
            self.close("memory")
            return
        self._recheck_timer = self.loop.call_later(RECHECK, self._recheck)

    def sweep(self, now: float) -> None:
        self.update_held()

    # ------------------------------------------------------------ throttling
    def _unthrottle(self, side: _Side) -> None:
        side.timer = None
        now = self.loop.time()
        if self.budget(now) < MIN_BUDGET:
            wait, _ = self.wait_time(now)
            side.timer = self.loop.call_later(max(wait, 0.001), self._unthrottle, side)
            return
        side.resume("throttle")

    def _release(self) -> None:
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
            self._recheck_timer = None
        for side, sock in zip(self.sides, self.socks, strict=True):
            if side.timer is not None:
                side.timer.cancel()
                side.timer = None
            if side.transport is not None:
                tail = side.encoder.closing() if side.encoder is not None else b""
                if tail:
                    side.write([tail])
                side.transport.close()
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        self.update_held()
        # A pair and its sides refer to each other, so only the cyclic collector frees them,
        # possibly much later: drop what they hold now (a partly assembled message can be
        # close to the assembly cap).
        for side in self.sides:
            side.decoder = side.encoder = None
            side.leftover = b""
