"""Relay pairs pumped through asyncio transports: raw TCP pairs, and pairs with a WebSocket side.

Each side is an ``asyncio.BufferedProtocol`` reading into one buffer shared by the process. A raw
TCP side's bytes go to the other socket unchanged (the default for TCP <-> TCP pairs unless
``RELAY_PUMP=splice``). Otherwise a TCP side is decoded as BytesCodec frames, a WebSocket side as
binary messages; each message is re-encoded for the other side, empty ones are dropped.
Backpressure runs both ways: when one side's write buffer passes its high-water mark the other
side stops reading, and a limited pair stops reading until its buckets refill.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import cast

from hubbub.errors import RemoteProtocolError
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_header
from shards.relay import metrics
from shards.relay.limiter import Bucket
from shards.relay.pair import MIN_BUDGET, Pair
from shards.relay.ws import OP_BINARY, WsReader, close_frame, frame_header


__all__ = ["MAX_MESSAGE", "BridgePair"]

MAX_MESSAGE = 16 * 1024 * 1024
"""Largest relayed message on a framed side; bounds a side's decode buffer."""
HIGH_WATER = 256 * 1024
RAW_HIGH_WATER = 1024 * 1024
"""Raw TCP sides move bulk bytes: a deeper write buffer means fewer pauses per byte."""
READ_BUFFER = 256 * 1024

# Every side of every pair reads into this one buffer. That is safe because the loop calls
# ``get_buffer`` and ``buffer_updated`` back to back and ``on_data`` consumes the bytes before
# returning: decoders copy what they keep, and a raw side either writes the view out at once or
# copies the part the kernel did not take. An idle pair therefore holds no read buffer at all.
_SHARED = memoryview(bytearray(READ_BUFFER))


class _Codec(abc.ABC):
    """Messages of one framed side: decode what it sends, encode what it receives."""

    closed = False
    """The side closed the stream in-band (a WebSocket close frame)."""

    @abc.abstractmethod
    def decode(self, data: memoryview) -> list[bytes]: ...

    @abc.abstractmethod
    def encode(self, payload: bytes) -> list[bytes]: ...

    def replies(self) -> bytes:
        """Bytes the protocol itself owes the side (WebSocket pongs, close echo)."""
        return b""

    def closing(self) -> bytes:
        """Bytes to send before closing the side."""
        return b""


class _TcpCodec(_Codec):
    def __init__(self) -> None:
        self._dec = FrameDecoder(MAX_MESSAGE)

    def decode(self, data: memoryview) -> list[bytes]:
        return self._dec.feed(bytes(data))

    def encode(self, payload: bytes) -> list[bytes]:
        return [encode_header(len(payload)), payload]


class _WsCodec(_Codec):
    def __init__(self) -> None:
        self._reader = WsReader(MAX_MESSAGE)

    def decode(self, data: memoryview) -> list[bytes]:
        msgs = self._reader.feed(data)
        self.closed = self._reader.closed
        return msgs

    def encode(self, payload: bytes) -> list[bytes]:
        return [frame_header(OP_BINARY, len(payload)), payload]

    def replies(self) -> bytes:
        out = b"".join(self._reader.to_send)
        self._reader.to_send.clear()
        return out

    def closing(self) -> bytes:
        return b"" if self._reader.closed else close_frame(1000)


def make_codec(transport: str, framed: bool) -> _Codec | None:
    """The side's codec; None for a raw side, whose bytes pass unchanged."""
    if transport == "ws":
        return _WsCodec()
    return _TcpCodec() if framed else None


class _Side(asyncio.BufferedProtocol):
    def __init__(self, pair: BridgePair, idx: int, codec: _Codec | None) -> None:
        self.pair = pair
        self.idx = idx
        self.codec = codec
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
            high=RAW_HIGH_WATER if self.codec is None else HIGH_WATER)
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

    # flow control
    def pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and not self.pair.closed:
            self.transport.resume_reading()

    def write(self, chunks: list[bytes]) -> None:
        if self._early is not None:
            self._early.extend(chunks)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

    def write_view(self, data: memoryview) -> None:
        """Write bytes that live in the shared read buffer (raw sides).

        While the transport holds nothing queued the bytes go straight to the socket, so bulk
        relaying copies nothing in user space; whatever the kernel does not take is copied
        into the transport's queue, which keeps the order and the backpressure.
        """
        tr = self.transport
        if self._early is not None or tr is None:
            self.write([bytes(data)])
            return
        if tr.is_closing():
            return
        sent = 0
        if self.fd >= 0 and not tr.get_write_buffer_size():
            try:
                sent = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.pair.close("error")
                return
        if sent < len(data):
            tr.write(bytes(data[sent:]))


class BridgePair(Pair):
    """Two sockets pumped through asyncio transports with message re-framing.

    Args:
        socks: the two sockets (raw, never owned by a transport before).
        transports: ``"tcp"`` or ``"ws"`` for each socket.
        leftovers: bytes each socket sent behind its first message.
        framed: decode TCP sides as BytesCodec frames (False only for raw TCP pairs).
    """

    mode = "bridge"

    def __init__(self, uuid: str, socks: tuple[socket.socket, socket.socket],
                 transports: tuple[str, str], leftovers: tuple[bytes, bytes],
                 addrs: tuple[str, str], ips: tuple[str, str], now: float, rate: float,
                 total: Bucket, on_closed: Callable[[Pair, str], None], framed: bool = True
                 ) -> None:
        super().__init__(uuid, addrs, ips, now, rate, total, on_closed)
        self.loop = asyncio.get_running_loop()
        self.socks = socks
        self.sides = (_Side(self, 0, make_codec(transports[0], framed)),
                      _Side(self, 1, make_codec(transports[1], framed)))
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
        codec, out = src.codec, dst.codec
        if codec is None or out is None:  # a raw pair (both sides raw)
            dst.write_view(data)
            if self.closed:
                return
        else:
            try:
                msgs = codec.decode(data)
            except RemoteProtocolError:
                self.close("protocol")
                return
            replies = codec.replies()
            if replies:
                src.write([replies])
            for m in msgs:
                if m:
                    dst.write(out.encode(m))
            if codec.closed:
                self.close("peer_closed")
                return
        if self.budget(now) < MIN_BUDGET:
            wait, bucket = self.wait_time(now)
            metrics.THROTTLED.labels(bucket).inc()
            src.pause("throttle")
            if src.timer is None:
                src.timer = self.loop.call_later(max(wait, 0.001), self._unthrottle, src)

    def _unthrottle(self, side: _Side) -> None:
        side.timer = None
        now = self.loop.time()
        if self.budget(now) < MIN_BUDGET:
            wait, _ = self.wait_time(now)
            side.timer = self.loop.call_later(max(wait, 0.001), self._unthrottle, side)
            return
        side.resume("throttle")

    def _release(self) -> None:
        for side, sock in zip(self.sides, self.socks, strict=True):
            if side.timer is not None:
                side.timer.cancel()
                side.timer = None
            if side.transport is not None:
                tail = side.codec.closing() if side.codec is not None else b""
                if tail:
                    side.write([tail])
                side.transport.close()
            else:
                with contextlib.suppress(OSError):
                    sock.close()
