"""RFC 4571 framing for ICE-TCP: each STUN/DTLS/SRTP packet prefixed by its 16-bit length."""

from __future__ import annotations

from hubbub.errors import RemoteProtocolError


__all__ = ["FramingError", "Rfc4571Decoder", "frame"]

MAX_FRAME = 0xFFFF


class FramingError(RemoteProtocolError):
    code = "framing"


def frame(data: bytes) -> bytes:
    """``data`` with its length prefix.

    Raises:
        FramingError: longer than 65535 bytes.
    """
    if len(data) > MAX_FRAME:
        raise FramingError("packet too long for RFC 4571 framing")
    return len(data).to_bytes(2, "big") + data


class Rfc4571Decoder:
    """Splits a TCP byte stream into packets; holds at most one partial packet."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append stream bytes; returns every complete packet (empty ones are skipped)."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        n = len(self._buf)
        while n - pos >= 2:
            size = (self._buf[pos] << 8) | self._buf[pos + 1]
            if n - pos - 2 < size:
                break
            if size:
                out.append(bytes(self._buf[pos + 2:pos + 2 + size]))
            pos += 2 + size
        del self._buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
