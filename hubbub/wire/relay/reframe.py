"""Relay messages carried between a TCP half (BytesCodec) and a WebSocket half, streamed. Sans-I/O.

A decoder (``TcpDecoder`` here, ``ws.WsDecoder``) walks the bytes one side sends and streams each
message into a sink: ``begin(n)``, ``data(chunk)``..., ``end()``. The sink on the other side
writes it in that side's framing as the pieces arrive (``TcpEncoder``, ``WsEncoder``), so a large
message, or one whose sender never finishes it, costs the relay nothing but the other side's
write queue, which backpressure bounds. Only a fragmented WebSocket message bound for a TCP side
is assembled, because a BytesCodec header needs the length up front; ``ASSEMBLY_CAP`` bounds it.
Empty messages and text messages are not relayed, as with hbbr.
"""

from __future__ import annotations

from hubbub.errors import FrameTooLarge
from hubbub.wire.rustdesk.framing import encode_header
from hubbub.wire.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    MessageSink,
    close_frame,
    frame_header,
)


__all__ = [
    "ASSEMBLY_CAP",
    "MAX_MESSAGE",
    "Chunk",
    "Collect",
    "TcpDecoder",
    "TcpEncoder",
    "WsEncoder",
]

MAX_MESSAGE = 16 * 1024 * 1024
"""Largest relayed message on a framed side (streamed, never held)."""
ASSEMBLY_CAP = 1024 * 1024
"""Largest fragmented WebSocket message assembled for a TCP side (browsers and RustDesk's own
clients send every message as one frame, which is streamed)."""

Chunk = bytes | memoryview


class TcpDecoder:
    """Stream BytesCodec frames into a sink; holds at most a 3-byte partial header.

    Args:
        max_message: a header announcing more is refused before any payload is read.
    """

    __slots__ = ("_head", "_left", "_max", "sink")

    def __init__(self, sink: MessageSink, max_message: int) -> None:
        self.sink = sink
        self._max = max_message
        self._head = bytearray()
        self._left = 0

    def feed(self, data: bytes | memoryview, stop: bool = False) -> int:
        """Decode ``data``; returns the bytes consumed: all, unless ``stop`` asked to stop right
        after the first complete frame.

        Raises:
            FrameTooLarge: a header announces more than ``max_message`` bytes.
        """
        view = memoryview(data)
        end = len(view)
        i = 0
        while i < end:
            if self._left:
                k = min(self._left, end - i)
                self.sink.data(view[i:i + k])
                i += k
                self._left -= k
                if self._left:
                    break
            else:
                head = self._head
                need = ((head[0] if head else view[i]) & 3) + 1
                take = min(need - len(head), end - i)
                head += view[i:i + take]
                i += take
                if len(head) < need:
                    break
                n = int.from_bytes(head, "little") >> 2
                head.clear()
                if n > self._max:
                    raise FrameTooLarge(f"frame of {n} bytes exceeds the {self._max} byte cap")
                self.sink.begin(n)
                self._left = n
                if n:
                    continue
            self.sink.end()
            if stop:
                break
        return i


class Collect:
    """A sink keeping whole messages (a half's first message; the decoder caps their size)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._buf = bytearray()

    def held(self) -> int:
        return len(self._buf)

    def begin(self, n: int | None) -> None:
        self._buf.clear()

    def data(self, chunk: Chunk) -> None:
        self._buf += chunk

    def end(self) -> None:
        self.messages.append(bytes(self._buf))
        self._buf.clear()


class TcpEncoder:
    """A sink writing messages as BytesCodec frames into ``out``.

    A message of known length passes through chunk by chunk behind its header; one of unknown
    length (fragmented WebSocket) is kept as the list of chunks it arrived in (no reallocation,
    no large one-off buffer) until it ends, up to ``ASSEMBLY_CAP``. Chunks in ``out`` may be
    views of the caller's read buffer: write or copy them before reading more.
    """

    __slots__ = ("_cap", "_parts", "_size", "out")

    def __init__(self, cap: int = ASSEMBLY_CAP) -> None:
        self.out: list[Chunk] = []
        self._cap = cap
        self._parts: list[bytes] | None = None
        self._size = 0

    def held(self) -> int:
        """Bytes of a message being assembled."""
        return self._size

    def begin(self, n: int | None) -> None:
        if n is None:
            self._parts, self._size = [], 0
        elif n:
            self.out.append(encode_header(n))

    def data(self, chunk: Chunk) -> None:
        if self._parts is None:
            self.out.append(chunk)
            return
        self._size += len(chunk)
        if self._size > self._cap:
            raise FrameTooLarge(f"fragmented message above {self._cap} bytes")
        self._parts.append(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def end(self) -> None:
        parts, self._parts = self._parts, None
        if parts is not None and self._size:
            self.out.append(encode_header(self._size))
            self.out += parts
        self._size = 0

    def control(self, frame: bytes) -> None:
        """TCP sides have no control frames."""

    def closing(self) -> bytes:
        return b""


class WsEncoder:
    """A sink writing messages as server WebSocket frames into ``out``.

    A message of known length becomes one frame whose payload passes through chunk by chunk; one
    of unknown length becomes one fragment per chunk and an empty final fragment. Control frames
    owed to this side (pong, close echo) go out between frames: inside a frame only the latest
    waits.
    """

    __slots__ = ("_deferred", "_frame", "_fragments", "_started", "closed", "out")

    def __init__(self) -> None:
        self.out: list[Chunk] = []
        self._frame = False  # inside a frame of known length
        self._fragments = False  # inside a fragmented message
        self._started = False
        self._deferred: bytes | None = None
        self.closed = False  # the side's close was echoed: nothing more may follow

    def held(self) -> int:
        return 0

    def begin(self, n: int | None) -> None:
        if n is None:
            self._fragments, self._started = True, False
        elif n:
            self.out.append(frame_header(OP_BINARY, n))
            self._frame = True

    def data(self, chunk: Chunk) -> None:
        if self._fragments:
            if not chunk:
                return
            op = OP_CONT if self._started else OP_BINARY
            self.out.append(frame_header(op, len(chunk), fin=False))
            self._started = True
        self.out.append(chunk)

    def end(self) -> None:
        if self._fragments and self._started:
            self.out.append(frame_header(OP_CONT, 0))
        self._frame = self._fragments = False
        if self._deferred is not None:
            self.control(self._deferred)

    def control(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._frame:
            self._deferred = frame
            return
        self._deferred = None
        self.out.append(frame)
        self.closed = frame[0] & 0x0F == OP_CLOSE

    def closing(self) -> bytes:
        """A close frame, unless one was sent or a frame is half written."""
        return b"" if self.closed or self._frame else close_frame(1000)
