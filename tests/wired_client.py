"""A Wired protocol 0.3.0 test client (websockets asyncio client).

It records every frame it receives; tests wait for subjects with bounded timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class WiredClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[str, Any]] = []
        self.binary: list[bytes] = []
        self.consumed: set[int] = set()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())
        self.player_ids: dict[str, int] = {}

    @classmethod
    async def connect(cls, url: str, ssl_context: ssl.SSLContext | None = None,
                      timeout: float = 5.0) -> WiredClient:
        ws = await asyncio.wait_for(
            connect(url, ssl=ssl_context, max_size=2**22, open_timeout=timeout), timeout)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    self.binary.append(msg)
                else:
                    obj = orjson.loads(msg)
                    self.frames.append((obj["subject"], obj.get("data")))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code, rcvd.reason) if rcvd else (1006, ""))
            self._changed.set()

    async def send(self, subject: str, data: Any = None) -> None:
        await self.ws.send(orjson.dumps({"subject": subject, "data": data}).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def wait_for(self, subject: str, timeout: float = 3.0,
                       where: Any = None) -> Any:
        """Data of the first unconsumed frame with ``subject`` (and ``where(data)`` true)."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(len(self.frames)):
                    s, d = self.frames[i]
                    if i not in self.consumed and s == subject and (where is None or where(d)):
                        self.consumed.add(i)
                        return d
                if self.closed.done():
                    raise AssertionError(f"closed {self.closed.result()} before {subject}; "
                                         f"got {self.frames}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_binary(self, timeout: float = 3.0, count: int = 1) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.binary) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.binary

    def subjects(self) -> list[str]:
        return [s for s, _ in self.frames]

    def all(self, subject: str) -> list[Any]:
        return [d for s, d in self.frames if s == subject]

    async def settle(self, quiet: float = 0.3) -> None:
        """Wait until no frame arrived for ``quiet`` seconds (bounded to 5 s)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while True:
                    n = len(self.frames) + len(self.binary)
                    await asyncio.sleep(quiet)
                    if len(self.frames) + len(self.binary) == n:
                        return

    async def join(self, uri: str, timeout: float = 5.0) -> int:
        await self.send("join", uri)
        data = await self.wait_for("join_success", timeout, where=lambda d: d["uri"] == uri)
        self.player_ids[uri] = int(data["playerId"])
        return self.player_ids[uri]

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int, str]:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
