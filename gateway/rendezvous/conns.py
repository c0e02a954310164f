"""Thin asyncio adapters for rendezvous connections (TCP frames and WebSocket messages).

Both expose the same small interface to the service: ``next_payload(timeout)``,
``send_message(payload)``, ``send_heartbeat()`` and ``close()``. Parsing stays in the sans-I/O
stream; handling stays in the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import Any, Protocol, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.rendezvous import metrics
from hubbub.errors import RemoteProtocolError
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.stream import KxState, RendezvousStream


__all__ = ["Acceptor", "Closed", "Conn", "Host", "TcpConn", "WsConn"]

KX_DELAY = 0.1
"""Wait this long for a client to speak before offering the secure-TCP handshake: clients that
want it stay silent (for up to 18 s); all others, including 1.1.x ones, send at once."""
MAX_QUEUED = 16
"""Frames a client may have waiting for handling; more means it is flooding us."""
WRITE_HIGH = 64 * 1024
"""Bytes buffered for a client above which writers wait (and its input is not read) until it
drains to ``WRITE_HIGH // 4``; a rendezvous client that reads never gets near this."""
WRITE_MAX = 4 * WRITE_HIGH
"""Bytes buffered for a client at which it is closed at once, waiting writers or not."""
WRITE_STALL = 5.0
"""Seconds a writer waits for a client that stopped reading before closing it."""


_CLOSING: set[asyncio.Future[None]] = set()
"""Close handshakes in progress (held so they are not collected half-way)."""


class Closed(Exception):
    """The connection is gone."""


class Conn:
    """What the service knows about one client connection."""

    transport_name = "tcp"
    websocket = False

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.addr_key = f"{addr[0]}:{addr[1]}"
        self.registered_id: str | None = None
        self.registered_uuid = b""
        self.registered_gen = b""  # the binding generation the registration was made under
        self.sink = False
        self.keep_alive = 0.0
        self.secure = False

    async def next_payload(self, timeout: float) -> bytes | None:
        raise NotImplementedError

    async def send_message(self, payload: bytes) -> None:
        raise NotImplementedError

    async def send_heartbeat(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TcpConn(Conn, asyncio.Protocol):
    """A framed TCP connection; frames are queued (bounded) for the service's handler task."""

    def __init__(self, addr: tuple[str, int], stream: RendezvousStream, transport_name: str,
                 on_lost: Any = None) -> None:
        super().__init__(addr)
        self.transport_name = transport_name
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self._on_lost = on_lost

    # asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_HIGH // 4)
        out = self.stream.data_to_send()
        if out:
            self.transport.write(out)
        if self.stream.state is KxState.PENDING:
            asyncio.get_running_loop().call_later(KX_DELAY, self._offer)

    def _offer(self) -> None:
        if self._closed or self.transport is None:
            return
        self.stream.offer()
        out = self.stream.data_to_send()
        if out:
            self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            payloads = self.stream.receive_data(data)
        except RemoteProtocolError:
            metrics.DROPPED.labels("bad_stream").inc()
            self.close()
            return
        if self.stream.secure and not self.secure:
            self.secure = True
            metrics.SECURE_HANDSHAKES.inc()
        for p in payloads:
            if len(self._queue) >= MAX_QUEUED:
                metrics.DROPPED.labels("stream_flood").inc()
                self.close()
                return
            self._queue.append(p)
        if payloads:
            self._ready.set()
        out = self.stream.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def eof_received(self) -> bool | None:
        self._mark_closed()
        return None

    def pause_writing(self) -> None:
        # Backpressure reaches the client: nothing more is read from it until it drains.
        self._drained.clear()
        if self.transport is not None and not self._closed:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._drained.set()
        if self.transport is not None and not self._closed:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        if self._on_lost is not None:
            self._on_lost(self)

    def _mark_closed(self) -> None:
        self._closed = True
        self._ready.set()
        self._drained.set()

    # Conn ---------------------------------------------------------------
    async def next_payload(self, timeout: float) -> bytes | None:
        while not self._queue:
            if self._closed:
                raise Closed()
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._queue.popleft()

    async def send_message(self, payload: bytes) -> None:
        if self._closed or self.transport is None:
            return
        self.stream.send(payload)
        await self._write(self.stream.data_to_send())

    async def send_heartbeat(self) -> None:
        if self._closed or self.transport is None:
            return
        self.stream.send_heartbeat()
        await self._write(self.stream.data_to_send())

    async def _write(self, data: bytes) -> None:
        """Write, then wait while the client is not reading; one that stays behind (or is
        ``WRITE_MAX`` behind at any time) is closed instead of buffered without limit."""
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if transport.get_write_buffer_size() >= WRITE_MAX:
            self._slow_reader()
            return
        if self._drained.is_set():
            return
        try:
            async with asyncio.timeout(WRITE_STALL):
                await self._drained.wait()
        except TimeoutError:
            self._slow_reader()

    def _slow_reader(self) -> None:
        metrics.DROPPED.labels("slow_reader").inc()
        self._mark_closed()
        if self.transport is not None:
            self.transport.abort()  # what is buffered for it is dropped with it

    def close(self) -> None:
        self._mark_closed()
        if self.transport is not None:
            self.transport.close()


class WsConn(Conn):
    """One WebSocket client: each binary message is one raw protobuf."""

    transport_name = "ws"
    websocket = True

    def __init__(self, addr: tuple[str, int], ws: ServerConnection) -> None:
        super().__init__(addr)
        self.ws = ws

    async def next_payload(self, timeout: float) -> bytes | None:
        try:
            async with asyncio.timeout(timeout):
                msg = await self.ws.recv()
        except TimeoutError:
            return None
        except ConnectionClosed:
            raise Closed() from None
        if isinstance(msg, bytes):
            return msg
        # Text messages are not protocol messages; like a heartbeat they only count as
        # activity (the empty payload resets the idle timer and carries nothing).
        metrics.DROPPED.labels("ws_text").inc()
        return b""

    async def send_message(self, payload: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(payload)

    async def send_heartbeat(self) -> None:
        await self.send_message(b"")

    def close(self) -> None:
        task = asyncio.ensure_future(self._close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


class Host(Protocol):
    """What an ``Acceptor`` needs from the service."""

    def admit(self, ip: str) -> bool: ...

    def new_stream(self, main: bool) -> RendezvousStream: ...

    def release(self, conn: Conn) -> None: ...

    def accepted(self, conn: TcpConn, main: bool) -> None: ...


class Acceptor(asyncio.Protocol):
    """Accepts one TCP connection, then hands it to a ``TcpConn`` served by a task."""

    def __init__(self, svc: Host, main: bool) -> None:
        self.svc = svc
        self.main = main
        self.conn: TcpConn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.close()
            return
        ip, port = addrmangle.normalize(peer)
        svc = self.svc
        if not svc.admit(ip):
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = "tcp" if self.main else "nat"
        conn = TcpConn((ip, port), svc.new_stream(self.main), name, svc.release)
        self.conn = conn
        conn.connection_made(transport)
        svc.accepted(conn, self.main)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            return self.conn.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.connection_lost(exc)
