"""The ops HTTP endpoint every process serves: ``/healthz``, ``/metrics`` and admin routes.

A deliberately tiny HTTP/1.1 server (one request per connection, bounded head and body, short
timeouts): it serves operators and Prometheus, never clients, so it needs nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


__all__ = ["OpsServer", "Request", "Response"]

log = logging.getLogger("hubbub.ops")

MAX_HEAD = 8192
MAX_BODY = 65536
TIMEOUT = 5.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class OpsServer:
    """Serve ``/healthz`` (200 only while ``healthy()``), ``/metrics`` and registered routes.

    Args:
        host: listen address.
        port: listen port (0: any free port; the bound one is ``self.port``).
        healthy: returns whether the process is fit to serve.
        admin_token: token required by routes registered with ``admin=True``.
    """

    def __init__(self, host: str, port: int, healthy: Callable[[], bool],
                 admin_token: str = "") -> None:
        self.host = host
        self.port = port
        self.healthy = healthy
        self.admin_token = admin_token
        self._routes: dict[str, tuple[Route, bool]] = {}
        self._server: asyncio.Server | None = None

    def route(self, prefix: str, handler: Route, admin: bool = False) -> None:
        """Serve paths starting with ``prefix``; admin routes need ``Authorization: Bearer``."""
        self._routes[prefix] = (handler, admin)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                resp = await self._respond(reader)
                head = (f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}\r\n"
                        f"Content-Type: {resp.content_type}\r\n"
                        f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n")
                head += "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items())
                writer.write(head.encode() + b"\r\n" + resp.body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        head = await reader.readuntil(b"\r\n\r\n") if reader else b""
        if len(head) > MAX_HEAD:
            return Response(413, b"request head too large\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return Response(400, b"bad request line\n")
        method, path, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return Response(400, b"bad content-length\n")
        if not 0 <= length <= MAX_BODY:
            return Response(413, b"body too large\n")
        body = await reader.readexactly(length) if length else b""
        req = Request(method, path, headers, body)
        if path == "/healthz":
            ok = self.healthy()
            return Response(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
        if path == "/metrics":
            return Response(200, generate_latest(), CONTENT_TYPE_LATEST)
        for prefix, (handler, admin) in self._routes.items():
            if path.startswith(prefix):
                if admin and not self._authorised(headers):
                    return Response(401, b"missing or wrong admin token\n")
                try:
                    return await handler(req)
                except Exception:
                    log.exception("ops route %s failed", prefix)
                    return Response(500, b"internal error\n")
        return Response(404, b"not found\n")

    def _authorised(self, headers: dict[str, str]) -> bool:
        got = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(self.admin_token) and hmac.compare_digest(got, self.admin_token)
