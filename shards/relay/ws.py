"""Server side of RFC 6455 for the relay's WebSocket port. Sans-I/O.

hbbr speaks plain ``ws://`` (TLS belongs to a reverse proxy), negotiates no extension or
subprotocol, and treats one binary message as one RustDesk message. The relay needs the exact
byte position where the first message ends, so that the rest can travel with the socket when it
is handed to another shard; hence this small codec instead of a full WebSocket library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from hubbub.errors import FrameTooLarge, RemoteProtocolError


_apply_mask: Callable[[bytes | bytearray | memoryview, bytes], bytes] | None
try:
    _apply_mask = importlib.import_module("websockets.speedups").apply_mask
except ImportError:  # pragma: no cover - the C speedups ship with websockets wheels
    _apply_mask = None


__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Handshake",
    "HandshakeDone",
    "WsReader",
    "close_frame",
    "frame_header",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MAX_HEAD = 8192

BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
UPGRADE_REQUIRED = (b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    if _apply_mask is not None:
        return bytes(_apply_mask(payload, mask))
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


def frame_header(opcode: int, length: int) -> bytes:
    """Header of one unmasked, final server frame carrying ``length`` bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def close_frame(code: int = 1000) -> bytes:
    body = code.to_bytes(2, "big")
    return frame_header(OP_CLOSE, len(body)) + body


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
    """Accumulate an HTTP upgrade request (bounded) and answer it."""

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
        head = bytes(self._buf[:end]).decode("latin-1")
        leftover = bytes(self._buf[end + 4:])
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1."):
            raise HandshakeError("not an HTTP GET request")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HandshakeError("malformed header line")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if "websocket" not in headers.get("upgrade", "").lower():
            raise HandshakeError("missing Upgrade: websocket")
        if "upgrade" not in [t.strip() for t in headers.get("connection", "").lower().split(",")]:
            raise HandshakeError("missing Connection: upgrade")
        if headers.get("sec-websocket-version", "") != "13":
            raise HandshakeError("unsupported WebSocket version", UPGRADE_REQUIRED)
        key = headers.get("sec-websocket-key", "")
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                raise HandshakeError("bad Sec-WebSocket-Key")
        except binascii.Error:
            raise HandshakeError("bad Sec-WebSocket-Key") from None
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        return HandshakeDone(parts[1], headers, response, leftover)


class WsReader:
    """Decode client frames into binary message payloads.

    Text messages count as traffic but are not relayed (hbbr turns them into empty chunks).
    Pings are answered, a close is echoed and ends the stream; both replies are collected in
    ``to_send``. Memory is bounded by ``max_message`` plus one partial frame header.

    Args:
        max_message: largest message accepted (after reassembly of fragments).
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None
        self.to_send: list[bytes] = []
        self.closed = False

    def pending(self) -> bytes:
        """Undecoded bytes (a partial frame)."""
        return bytes(self._buf)

    def feed(self, data: bytes | memoryview, limit: int = -1) -> list[bytes]:
        """Append ``data``; return complete binary messages (at most ``limit`` if >= 0).

        Raises:
            RemoteProtocolError: a protocol violation (the caller closes the connection).
            FrameTooLarge: a message above ``max_message``.
        """
        if self.closed:
            return []
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2 and (limit < 0 or len(out) < limit):
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise RemoteProtocolError("reserved bits set (no extension negotiated)")
            if not b1 & 0x80:
                raise RemoteProtocolError("client frame not masked")
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                hl = 4
                if end - pos < hl:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif n == 127:
                hl = 10
                if end - pos < hl:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
            opcode = b0 & 0x0F
            fin = bool(b0 & 0x80)
            if opcode >= 0x8:
                if n > 125 or not fin:
                    raise RemoteProtocolError("invalid control frame")
            elif self._size + n > self.max_message:
                raise FrameTooLarge(f"WebSocket message above {self.max_message} bytes")
            if end - pos < hl + 4 + n:
                break
            mask = bytes(buf[pos + hl:pos + hl + 4])
            start = pos + hl + 4
            payload = unmask(memoryview(buf)[start:start + n], mask) if n else b""
            pos = start + n
            if opcode == OP_PING:
                self.to_send.append(frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                code = payload[:2] if len(payload) >= 2 else b""
                self.to_send.append(frame_header(OP_CLOSE, len(code)) + code)
                self.closed = True
                break
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._opcode is not None:
                    raise RemoteProtocolError("new message inside a fragmented one")
                if fin:
                    if opcode == OP_BINARY:
                        out.append(payload)
                else:
                    self._opcode = opcode
                    self._parts = [payload]
                    self._size = n
            elif opcode == OP_CONT:
                if self._opcode is None:
                    raise RemoteProtocolError("continuation without a message")
                self._parts.append(payload)
                self._size += n
                if fin:
                    if self._opcode == OP_BINARY:
                        out.append(b"".join(self._parts))
                    self._opcode, self._parts, self._size = None, [], 0
            else:
                raise RemoteProtocolError(f"unknown opcode {opcode}")
        if pos:
            del buf[:pos]
        return out
