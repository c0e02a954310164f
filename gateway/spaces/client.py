"""One spaces WebSocket: identity, memberships, admission and a bounded outbound queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.spaces import metrics
from hubbub.tasks import TaskSet
from hubbub.wire.wired import outbound
from hubbub.wire.wired.admission import Admission
from hubbub.wire.wired.inbound import Limits


__all__ = ["Client"]

log = logging.getLogger("hubbub.spaces")

MAX_QUEUED = 4096
"""Frames waiting for a slow socket; beyond this it is disconnected (1008) instead of growing."""
MAX_QUEUED_BYTES = 1 << 20
"""Bytes waiting for a slow socket (about 12 s of 256-player position batches)."""
STRIKE_LIMIT = 50
"""Bad or excess messages tolerated within 10 s before the socket is closed with 1008."""
RESUME_GAP = 0.1
"""Seconds between two resume_audio calls to the shard for one socket."""


class Client:
    """State of one spaces connection on this gateway.

    Args:
        session: cluster-wide unique id (``<gateway id>/<n>``); also the media session id.
        ws: the WebSocket connection.
        ip: the client's address (after trusted-proxy headers).
        limits: field size limits.
        rate, burst: token bucket of inbound messages.
    """

    def __init__(self, session: str, ws: ServerConnection, ip: str, limits: Limits,
                 rate: float, burst: int) -> None:
        self.session = session
        self.ws = ws
        self.ip = ip
        self.shard: str | None = None
        self.spaces: dict[str, int] = {}
        self.name: str | None = None
        self.avatar: str | None = None
        self.address: str | None = None
        self.grounded = True
        self.positions: bool | None = None
        """Opted in to batched positions: True/False when said, None until then."""
        self.admission = Admission(limits, rate, float(burst), STRIKE_LIMIT,
                                    resume_gap=RESUME_GAP)
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._tasks = TaskSet(log, "spaces socket")
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def memberships(self) -> dict[str, int]:
        return dict(self.spaces)

    @property
    def wants_positions(self) -> bool:
        return bool(self.positions)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work for this socket outside its message loop (cancelled when it goes)."""
        self._tasks.spawn(coro)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._tasks.cancel()

    # -------------------------------------------------------------- sending
    def start(self) -> None:
        self._writer = asyncio.ensure_future(self._write_loop())

    def send(self, frame: bytes) -> None:
        """Queue a JSON text frame (already encoded)."""
        self._push(frame, True)

    def send_binary(self, data: bytes) -> None:
        self._push(data, False)

    def send_error(self, code: str, message: str, subject: str | None = None) -> None:
        metrics.ERRORS.labels(code).inc()
        self._push(outbound.error(code, message, subject), True)

    def _push(self, data: bytes, text: bool) -> None:
        if self.closing:
            return
        if len(self._queue) >= MAX_QUEUED or self._queued_bytes > MAX_QUEUED_BYTES:
            self.abort(1008, "too slow to receive")
            return
        self._queue.append((data, text))
        self._queued_bytes += len(data)
        self._wake.set()

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    data, text = self._queue.popleft()
                    self._queued_bytes -= len(data)
                    await ws.send(data, text=text)
                    metrics.MESSAGES_OUT.inc()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug must not leave a half-dead socket
            log.exception("writer of %s failed", self.session)
            self.abort(1011, "internal error")

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until queued frames are written; used before a deliberate close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and self._writer is not None and not self._writer.done():
                    await asyncio.sleep(0.005)

    def abort(self, code: int, reason: str) -> None:
        """Close the socket (once) after what is queued so far has been written."""
        if self.closing:
            return
        self.closing = True
        metrics.CLOSED.labels(str(code)).inc()
        asyncio.ensure_future(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        await self.flush()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def stop(self) -> None:
        self.closing = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    def __repr__(self) -> str:
        return f"<Client {self.session} {self.ip} spaces={len(self.spaces)}>"
