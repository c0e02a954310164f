"""The WebSocket frame codec of hubbub's own sockets (the relay's port): streaming, sans-I/O.

hbbr speaks plain ``ws://`` (TLS belongs to a reverse proxy), negotiates no extension or
subprotocol, and treats one binary message as one RustDesk message. The relay needs the exact
byte position where the first message ends, so that the rest can travel with the socket when it
is handed to another shard, and must stream messages of any size through bounded memory; the
websockets library's sans-I/O protocol buffers whole frames and consumes all it is fed, so frame
headers are read here, while unmasking and the upgrade handshake are the library's (its public
frame parser and server protocol). The gateways' WebSocket ports run the websockets library.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

from websockets.frames import Frame
from websockets.http11 import Request
from websockets.server import ServerProtocol

from hubbub.errors import FrameTooLarge, RemoteProtocolError


__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Handshake",
    "HandshakeDone",
    "MessageSink",
    "WsDecoder",
    "close_frame",
    "frame_header",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MAX_HEAD = 8192

_HEAD_64 = b"\x82\xff"  # FIN, binary, masked, 64-bit length
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``mask`` repeated (RFC 6455 section 5.3).

    Done by the websockets library's frame parser (its C speedups when installed): it is handed a
    masked binary frame whose header is made up here and whose payload is ``payload`` itself, so
    the bytes are not copied on the way in.
    """
    n = len(payload)
    if not n:
        return b""
    parts = iter((_HEAD_64, n.to_bytes(8, "big"), mask, payload))

    def read_exact(_size: int) -> Generator[None, None, bytes]:
        return next(parts)  # type: ignore[return-value]  # a memoryview is read as bytes
        yield  # a generator, as the parser expects

    parser = Frame.parse(read_exact, mask=True)
    try:
        parser.send(None)
    except StopIteration as done:
        return bytes(done.value.data)
    raise AssertionError("the frame parser asked for more than one frame")


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """Header of one unmasked server frame carrying ``length`` bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def close_frame(code: int = 1000) -> bytes:
    body = code.to_bytes(2, "big")
    return frame_header(OP_CLOSE, len(body)) + body


class MessageSink(Protocol):
    """Where a decoder streams messages: ``begin(n)`` (None: length unknown until the end),
    ``data(chunk)`` any number of times, ``end()``. A chunk is only valid during the call."""

    def begin(self, n: int | None) -> None: ...

    def data(self, chunk: bytes | memoryview) -> None: ...

    def end(self) -> None: ...


@dataclass(frozen=True)
class HandshakeDone:
    """The upgrade succeeded: send ``response``; ``leftover`` are bytes after the request head."""

    path: str
    headers: dict[str, str]
    response: bytes
    leftover: bytes


class HandshakeError(RemoteProtocolError):
    """The upgrade request is invalid; ``response`` is the HTTP error to send before closing."""

    def __init__(self, message: str, response: bytes = BAD_REQUEST) -> None:
        super().__init__(message, close_code=1002)
        self.response = response


class Handshake:
    """Accumulate an HTTP upgrade request (bounded) and answer it through the websockets
    library's sans-I/O server protocol: the checks and answers of every hubbub WebSocket port."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._buf = bytearray()
        self._max = max_head

    def feed(self, data: bytes) -> HandshakeDone | None:
        """None until the head is complete.

        Raises:
            HandshakeError: malformed, oversized or non-WebSocket request.
        """
        start = max(0, len(self._buf) - 3)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buf) > self._max:
                raise HandshakeError("request head too large")
            return None
        if end > self._max:
            raise HandshakeError("request head too large")
        head, leftover = bytes(self._buf[:end + 4]), bytes(self._buf[end + 4:])
        self._buf.clear()
        # Only the head goes in, so the bytes behind it stay ours, exactly as received.
        proto = ServerProtocol(max_size=None)
        proto.receive_data(head)
        events = proto.events_received()
        request = events[0] if events and isinstance(events[0], Request) else None
        if request is None:  # not HTTP: the protocol has answered it already
            raise HandshakeError(str(proto.handshake_exc or "malformed request"),
                                 b"".join(proto.data_to_send()))
        answer = proto.accept(request)
        proto.send_response(answer)
        response = b"".join(proto.data_to_send())
        if answer.status_code != 101:
            raise HandshakeError(str(proto.handshake_exc or answer.reason_phrase), response)
        headers: dict[str, str] = {}
        for name, value in request.headers.raw_items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return HandshakeDone(request.path, headers, response, leftover)


class WsDecoder:
    """Stream client frames into a message sink without assembling them.

    Binary messages go to ``sink`` piece by piece (``begin(n)``, ``data(chunk)``..., ``end()``;
    ``n`` is None for a fragmented message, whose length is unknown until it ends), unmasked as
    they arrive, so memory per connection is one partial frame header and one control frame
    (at most 139 bytes) however large a message is. Text messages count as traffic but are not
    relayed (hbbr turns them into empty chunks). A ping is answered with a pong (only the latest
    one is kept, as RFC 6455 allows), a close is echoed and ends the stream; both wait in
    ``replies``.

    Args:
        sink: receives the binary messages; a chunk given to ``data`` is a fresh ``bytes``.
        max_message: largest message accepted (all fragments together).
    """

    __slots__ = ("_ctl", "_fin", "_head", "_left", "_mask", "_max", "_msg", "_off", "_op",
                 "_size", "closed", "pong", "close_reply", "sink")

    def __init__(self, sink: MessageSink, max_message: int) -> None:
        self.sink = sink
        self._max = max_message
        self._head = bytearray()
        self._left = 0
        self._op = -1  # opcode of the frame whose payload is arriving; -1 between frames
        self._fin = False
        self._mask = b""
        self._off = 0
        self._msg: int | None = None  # opcode of the message in progress
        self._size = 0
        self._ctl = bytearray()
        self.pong: bytes | None = None
        self.close_reply: bytes | None = None
        self.closed = False

    def replies(self) -> list[bytes]:
        """Frames owed to the client (pong, close echo); each is returned once."""
        out = [r for r in (self.pong, self.close_reply) if r is not None]
        self.pong = self.close_reply = None
        return out

    def feed(self, data: bytes | memoryview, stop: bool = False) -> int:
        """Decode ``data``; returns how many bytes were consumed: all of them, unless the stream
        closed or ``stop`` asked to stop right after the first complete message.

        Raises:
            RemoteProtocolError: a protocol violation (the caller closes the connection).
            FrameTooLarge: a message above ``max_message``.
        """
        view = memoryview(data)
        end = len(view)
        i = 0
        while i < end and not self.closed:
            if self._op < 0:
                i = self._read_header(view, i)
                if self._op < 0:
                    break
                if self._left:
                    continue
            else:
                k = min(self._left, end - i)
                self._payload(view[i:i + k])
                i += k
                self._left -= k
                if self._left:
                    break
            if self._frame_done() and stop:
                break
        return i

    def _read_header(self, view: memoryview, i: int) -> int:
        head = self._head
        need = 2
        while True:
            take = min(need - len(head), len(view) - i)
            if take > 0:
                head += view[i:i + take]
                i += take
            if len(head) < need:
                return i
            if need == 2:
                if head[0] & 0x70:
                    raise RemoteProtocolError("reserved bits set (no extension negotiated)")
                if not head[1] & 0x80:
                    raise RemoteProtocolError("client frame not masked")
            n = head[1] & 0x7F
            full = 2 + (2 if n == 126 else 8 if n == 127 else 0) + 4
            if need == full:
                break
            need = full
        b0, b1 = head[0], head[1]
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(head[2:4], "big")
        elif n == 127:
            n = int.from_bytes(head[2:10], "big")
        mask = bytes(head[-4:])
        head.clear()
        op, fin = b0 & 0x0F, bool(b0 & 0x80)
        if op >= 0x8:
            if n > 125 or not fin:
                raise RemoteProtocolError("invalid control frame")
            if op not in (OP_CLOSE, OP_PING, OP_PONG):
                raise RemoteProtocolError(f"unknown opcode {op}")
        elif op in (OP_TEXT, OP_BINARY):
            if self._msg is not None:
                raise RemoteProtocolError("new message inside a fragmented one")
            if n > self._max:
                raise FrameTooLarge(f"WebSocket message above {self._max} bytes")
            self._msg, self._size = op, n
            if op == OP_BINARY:
                self.sink.begin(n if fin else None)
        elif op == OP_CONT:
            if self._msg is None:
                raise RemoteProtocolError("continuation without a message")
            self._size += n
            if self._size > self._max:
                raise FrameTooLarge(f"WebSocket message above {self._max} bytes")
        else:
            raise RemoteProtocolError(f"unknown opcode {op}")
        self._op, self._fin, self._mask, self._left, self._off = op, fin, mask, n, 0
        return i

    def _payload(self, chunk: memoryview) -> None:
        op = self._op
        if op >= 0x8:
            self._ctl += chunk
            return
        if self._msg == OP_BINARY and chunk:
            r = self._off & 3
            mask = self._mask[r:] + self._mask[:r] if r else self._mask
            self.sink.data(unmask(chunk, mask))
        self._off += len(chunk)

    def _frame_done(self) -> bool:
        """The frame's payload is complete; True when it completed a binary message."""
        op, self._op = self._op, -1
        if op >= 0x8:
            payload = unmask(self._ctl, self._mask) if self._ctl else b""
            self._ctl.clear()
            if op == OP_PING:
                self.pong = frame_header(OP_PONG, len(payload)) + payload
            elif op == OP_CLOSE:
                code = payload[:2] if len(payload) >= 2 else b""
                self.close_reply = frame_header(OP_CLOSE, len(code)) + code
                self.closed = True
            return False
        if not self._fin:
            return False
        msg, self._msg = self._msg, None
        if msg == OP_BINARY:
            self.sink.end()
            return True
        return False
