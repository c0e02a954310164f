"""The server connection class every hubbub WebSocket port runs: one request head first.

websockets feeds everything a client sends to its parser at once. Bytes behind the first request
head are parsed as WebSocket frames even while the handshake is still being answered, so a second
HTTP request pipelined behind a plain ``GET`` fails the connection before the answer is written
(and websockets then logs an internal error). Here the bytes behind the head are held, within a
bound, until the handshake is done: after a ``101`` they are fed on as frames (a client may send
its first frames without waiting), after a plain HTTP answer they are dropped and the
connection closes, as it would after one request.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State


__all__ = ["EARLY_BYTES_LIMIT", "HeadFirstConnection"]

EARLY_BYTES_LIMIT = 256 * 1024
_END = b"\r\n\r\n"


class HeadFirstConnection(ServerConnection):
    """A ``ServerConnection`` that never lets bytes behind the request head reach the parser
    before the handshake answer; pass it as ``create_connection`` to ``serve``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_seen = False
        self._tail = b""  # last bytes of the head so far, to find a terminator split in two
        self._early = bytearray()
        self._holding = True  # until the handshake is answered

    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            buf = self._tail + data
            at = buf.find(_END)
            if at < 0:
                self._tail = buf[-(len(_END) - 1):]
                super().data_received(data)
                return
            self._head_seen = True
            cut = at + len(_END) - len(self._tail)
            super().data_received(data[:cut])
            data = data[cut:]
            if not data:
                return
        if self._holding:
            if len(self._early) + len(data) > EARLY_BYTES_LIMIT:
                self._early.clear()
                self.transport.close()
            else:
                self._early += data
            return
        super().data_received(data)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._holding = False
            early, self._early = bytes(self._early), bytearray()
        # After a plain HTTP answer the parser only discards; the held bytes go nowhere.
        if early and self.protocol.state is State.OPEN:
            super().data_received(early)
