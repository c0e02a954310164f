"""RustDesk ``BytesCodec`` framing for TCP streams (rendezvous and relay).

A frame is a 1–4 byte little-endian header ``(n << 2) | (header_len - 1)`` followed by ``n``
payload bytes. The decoder never allocates from a header: it checks the announced length against
its cap before waiting for the payload, so a forged header costs nothing but the connection.
"""

from __future__ import annotations

from hubbub.errors import FrameTooLarge, LocalProtocolError


__all__ = ["DEFAULT_MAX_FRAME", "MAX_PAYLOAD", "FrameDecoder", "encode_frame", "encode_header"]

MAX_PAYLOAD = 0x3FFFFFFF
"""Largest length a 4-byte header can express."""

DEFAULT_MAX_FRAME = 64 * 1024
"""Cap for rendezvous connections: real control messages are a few hundred bytes."""


def encode_header(n: int) -> bytes:
    """The shortest header for a payload of ``n`` bytes.

    Raises:
        LocalProtocolError: ``n`` is negative or above ``MAX_PAYLOAD``.
    """
    if n < 0 or n > MAX_PAYLOAD:
        raise LocalProtocolError(f"frame payload length out of range: {n}")
    if n <= 0x3F:
        return bytes((n << 2,))
    if n <= 0x3FFF:
        return ((n << 2) | 1).to_bytes(2, "little")
    if n <= 0x3FFFFF:
        return ((n << 2) | 2).to_bytes(3, "little")
    return ((n << 2) | 3).to_bytes(4, "little")


def encode_frame(payload: bytes) -> bytes:
    """``payload`` with its BytesCodec header."""
    return encode_header(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed stream bytes, get complete frame payloads.

    Args:
        max_size: largest accepted payload; a header announcing more raises ``FrameTooLarge``
            before any payload is buffered (memory stays bounded by ``max_size`` + 4 + one read).
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_size <= MAX_PAYLOAD:
            raise LocalProtocolError(f"max_size out of range: {max_size}")
        self._max = max_size
        self._buf = bytearray()

    @property
    def max_size(self) -> int:
        return self._max

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the payloads of every frame now complete (possibly none).

        Raises:
            FrameTooLarge: a header announces more than ``max_size`` bytes. The decoder is then
                unusable; the caller closes the connection.
        """
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            hl = (buf[pos] & 3) + 1
            if end - pos < hl:
                break
            n = int.from_bytes(buf[pos:pos + hl], "little") >> 2
            if n > self._max:
                self._buf = bytearray()
                raise FrameTooLarge(f"frame of {n} bytes exceeds the {self._max} byte cap")
            if end - pos - hl < n:
                break
            start = pos + hl
            frames.append(bytes(buf[start:start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return frames

    def pending(self) -> bytes:
        """Bytes received after the last complete frame (a partial frame, or raw data)."""
        return bytes(self._buf)

    def buffered(self) -> int:
        return len(self._buf)
