"""``GET /api/live``: a WebSocket that pushes the chosen view's data every second.

The page sends ``{"view": "<name>", "arg": "<space uri or empty>"}`` whenever it switches view;
the server answers at once and then once a second with ``{"view", "arg", "data"}`` (data shared
with ``GET /api/<view>`` through the view cache, so many browsers cost one read per second), or
with ``{"view", "arg", "same": true}`` when the data did not change since the last message.
The session is checked again every ``RECHECK`` seconds: logging out or removing the user ends
the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from aiohttp import WSMsgType, web

from gateway.console.api import VIEWS, caller_of, state_of, view
from hubbub.errors import RegistryError


__all__ = ["LiveFeeds"]

log = logging.getLogger("hubbub.console.live")

PERIOD = 1.0
RECHECK = 10.0
MAX_FEEDS = 64
"""Live feeds per gateway; more get 503 (the views stay reachable by polling)."""
MAX_MESSAGE = 8192


class LiveFeeds:
    """The live feeds of one gateway."""

    def __init__(self) -> None:
        self.feeds: set[web.WebSocketResponse] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self.feeds) >= MAX_FEEDS:
            return web.json_response({"error": "too many live feeds"}, status=503)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        self.feeds.add(ws)
        choice = {"view": "cluster", "arg": ""}
        wake = asyncio.Event()

        async def reader() -> None:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                    data = orjson.loads(msg.data)
                    name, arg = str(data.get("view", "")), str(data.get("arg") or "")
                    if name in VIEWS:
                        choice.update(view=name, arg=arg[:2048])
                        wake.set()

        task = asyncio.ensure_future(reader())
        checked = time.monotonic()
        last = b""
        try:
            while not ws.closed and not task.done():
                now = time.monotonic()
                if now - checked >= RECHECK:
                    checked = now
                    with contextlib.suppress(RegistryError):
                        if await caller_of(request) is None:
                            await ws.close(code=4401, message=b"session ended")
                            break
                name, arg = choice["view"], choice["arg"]
                try:
                    data = await view(state_of(request), name, arg)
                    out = {"view": name, "arg": arg, "data": data}
                except RegistryError as exc:
                    out = {"view": name, "arg": arg, "error":
                           f"control plane unreachable: {exc}"}
                blob = orjson.dumps(out)
                if blob == last:
                    # Nothing changed: a short beat keeps the page's "live" mark on.
                    blob = orjson.dumps({"view": name, "arg": arg, "same": True})
                else:
                    last = blob
                await ws.send_str(blob.decode())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PERIOD):
                        await wake.wait()
                wake.clear()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.feeds.discard(ws)
            await ws.close()
        return ws

    async def close(self) -> None:
        for ws in list(self.feeds):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"gateway shutting down")
