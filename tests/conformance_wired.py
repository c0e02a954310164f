"""An independent Wired 0.3.0 client for conformance tests, written from the protocol alone.

Plain JSON over a ``websockets`` client with permessage-deflate offered (as browsers do). Every
received frame is kept in arrival order; tests read the log with a cursor so they can check both
content and ordering, and ``quiet`` checks that nothing (else) arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


__all__ = ["Frame", "WiredPeer"]


@dataclass
class Frame:
    """One received WebSocket message: JSON text (``subject``/``data``) or binary bytes."""

    text: str | None
    binary: bytes | None
    at: float

    @property
    def json(self) -> Any:
        assert self.text is not None, "binary frame"
        return json.loads(self.text)

    @property
    def subject(self) -> str | None:
        if self.text is None:
            return None
        obj = self.json
        return obj.get("subject") if isinstance(obj, dict) else None

    @property
    def data(self) -> Any:
        return self.json["data"]


class WiredPeer:
    """One Wired socket: send ``{subject, data}``, read what the host sends, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.log: list[Frame] = []
        self.cursor = 0
        self.closed: asyncio.Future[tuple[int | None, str]] = \
            asyncio.get_running_loop().create_future()
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, compression: str | None = "deflate") -> WiredPeer:
        ws = await connect(url, compression=compression, max_size=1 << 22, open_timeout=5,
                           ping_interval=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                now = time.monotonic()
                if isinstance(msg, str):
                    self.log.append(Frame(msg, None, now))
                else:
                    self.log.append(Frame(None, bytes(msg), now))
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code if rcvd else None,
                                        rcvd.reason if rcvd else ""))
            self._arrived.set()

    # ------------------------------------------------------------ sending
    async def send(self, subject: str, data: Any = None) -> None:
        await self.ws.send(json.dumps({"subject": subject, "data": data}))

    async def send_raw(self, payload: str | bytes) -> None:
        await self.ws.send(payload)

    # ----------------------------------------------------------- reading
    async def next(self, timeout: float = 5.0) -> Frame:
        """The next unread frame, whatever it is."""
        deadline = time.monotonic() + timeout
        while self.cursor >= len(self.log):
            if self.closed.done():
                raise AssertionError(f"socket closed {self.closed.result()} while waiting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame arrived")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._arrived.wait()
        frame = self.log[self.cursor]
        self.cursor += 1
        return frame

    async def next_text(self, timeout: float = 5.0) -> Frame:
        """The next unread text frame (binary position batches are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            f = await self.next(max(0.01, deadline - time.monotonic()))
            if f.text is not None:
                return f

    async def expect(self, subject: str, timeout: float = 5.0) -> Any:
        """The next text frame must have ``subject``; returns its data (strict order)."""
        f = await self.next_text(timeout)
        assert f.subject == subject, f"expected {subject}, got {f.text}"
        assert set(f.json) == {"subject", "data"}, f.text
        return f.data

    async def wait_for(self, subject: str, timeout: float = 5.0) -> Any:
        """Skip frames until one with ``subject`` arrives; returns its data."""
        deadline = time.monotonic() + timeout
        while True:
            f = await self.next(max(0.01, deadline - time.monotonic()))
            if f.subject == subject:
                return f.data

    async def next_binary(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            f = await self.next(max(0.01, deadline - time.monotonic()))
            if f.binary is not None:
                return f.binary

    async def quiet(self, seconds: float = 0.3, text_only: bool = True) -> None:
        """Nothing (no text frame, by default) arrives within ``seconds``."""
        await asyncio.sleep(seconds)
        extra = [f for f in self.log[self.cursor:] if f.text is not None or not text_only]
        assert not extra, f"unexpected frames: {[f.text or f.binary for f in extra]}"
        self.cursor = len(self.log)

    def seen(self, subject: str, since: int = 0) -> list[Any]:
        """Data of every text frame with ``subject`` received from log index ``since`` on."""
        return [f.data for f in self.log[since:] if f.subject == subject]

    def skip_all(self) -> None:
        self.cursor = len(self.log)

    async def join(self, uri: str, timeout: float = 5.0) -> int:
        """Join and return the playerId (reading past ``join_success``)."""
        await self.send("join", uri)
        data = await self.wait_for("join_success", timeout)
        assert data["uri"] == uri
        pid = data["playerId"]
        assert isinstance(pid, int)
        return pid

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
