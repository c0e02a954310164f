"""The ops HTTP endpoint every process serves: ``/healthz``, ``/livez``, ``/readyz``,
``/metrics`` and admin routes.

``/livez`` is 200 while the process serves at all (restart it only when this fails);
``/readyz`` is 200 while it should get new clients (control plane reachable, not draining);
``/healthz`` is 200 while both hold and every service is fit.

Served by aiohttp (bounded head and body, keep-alive with timeouts) on one socket built by
``listen_socket``, so it follows the same dual-stack rule as every other listener. Routes see
plain ``Request``/``Response`` values, never the web framework.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hubbub.net import listen_socket


__all__ = ["OpsServer", "Request", "Response"]

log = logging.getLogger("hubbub.ops")

MAX_BODY = 65536


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


class OpsServer:
    """Serve ``/healthz`` (200 only while ``healthy()``), ``/metrics`` and registered routes.

    Args:
        host: listen address (``::`` serves IPv4 and IPv6).
        port: listen port (0: any free port; the bound one is ``self.port``).
        healthy: returns whether the process is fit to serve.
        admin_token: token required by routes registered with ``admin=True``.
    """

    def __init__(self, host: str, port: int, healthy: Callable[[], bool],
                 admin_token: str = "", ready: Callable[[], bool] | None = None) -> None:
        self.host = host
        self.port = port
        self.healthy = healthy
        self.ready = ready or healthy
        self.admin_token = admin_token
        self._routes: dict[str, tuple[Route, bool]] = {}
        self._runner: web.AppRunner | None = None

    def route(self, prefix: str, handler: Route, admin: bool = False) -> None:
        """Serve paths starting with ``prefix``; admin routes need ``Authorization: Bearer``."""
        self._routes[prefix] = (handler, admin)

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        # Not SO_REUSEPORT: an ops port belongs to exactly one process, so a second one
        # asking for it must fail at start instead of sharing its probes.
        sock = listen_socket(self.host, self.port, reuse_port=False, backlog=128)
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="body too large\n")
        headers = {k.lower(): v for k, v in request.headers.items()}
        resp = await self.respond(Request(request.method, request.path, headers, body))
        out = web.Response(status=resp.status, body=resp.body, headers=resp.headers)
        out.headers["Content-Type"] = resp.content_type
        return out

    async def respond(self, req: Request) -> Response:
        """Answer one request (the routing, independent of the HTTP server)."""
        if req.path == "/healthz":
            ok = self.healthy()
            return Response(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
        if req.path == "/livez":
            return Response(200, b"ok\n")
        if req.path == "/readyz":
            ok = self.ready()
            return Response(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        if req.path == "/metrics":
            return Response(200, generate_latest(), CONTENT_TYPE_LATEST)
        for prefix, (handler, admin) in self._routes.items():
            if req.path.startswith(prefix):
                if admin and not self._authorised(req.headers):
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
