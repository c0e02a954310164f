"""Plain HTTP on the spaces port: player counts, health, and the demo page's static files."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

import hubbub
from gateway.spaces.store import SpaceStore
from hubbub.errors import RegistryUnavailable


__all__ = ["WEB_DIR", "HttpRoutes"]

WEB_DIR = Path(hubbub.__file__).resolve().parent / "web"
PLAYER_COUNT = "/player-count/"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
MAX_FILE = 8 * 1024 * 1024


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              cors: bool = False) -> Response:
    # The connection closes after one response; say so, or pooling HTTP clients (the web app's
    # server-side fetch) may send the next request into a closed socket.
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("Connection", "close")])
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    return Response(status, reasons.get(status, "Error"), headers, body)


def count_candidates(target: str) -> list[str]:
    """Space URIs ``/player-count/<uri>`` may name, most literal first.

    The Wired host counts the raw rest of the path (uWS drops the query). The web app appends a
    space URI unencoded, but HTTP clients percent-encode what a request line cannot carry
    (spaces, non-ASCII) and a URI may have its own query, so the full rest and its decoded form
    are tried as well; the first with players wins.
    """
    rest = target[len(PLAYER_COUNT):]
    out: list[str] = []
    for uri in (rest.split("?", 1)[0], rest):
        for cand in (uri, client_decoded(uri), urllib.parse.unquote(uri)):
            if cand not in out:
                out.append(cand)
    return out


_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_CLIENT_ENCODED = frozenset(' "<>\\^`{|}\'') | frozenset(map(chr, range(0x20))) | {"\x7f"}


def client_decoded(uri: str) -> str:
    """Undo only what a URL parser encodes by itself (spaces, quotes, non-ASCII…), keeping
    escapes the URI had already (``%25``, ``%2F``): ``a b%25`` is sent as ``a%20b%25``."""
    def undo(m: re.Match[str]) -> str:
        text = m.group(0)
        escapes = [text[k:k + 3] for k in range(0, len(text), 3)]
        raw = bytes(int(e[1:], 16) for e in escapes)
        out: list[str] = []
        i = 0
        while i < len(raw):
            if raw[i] < 0x80:
                ch = chr(raw[i])
                out.append(ch if ch in _CLIENT_ENCODED else escapes[i])
                i += 1
                continue
            j = i + 1
            while j < len(raw) and raw[j] >= 0x80:
                j += 1
            try:
                out.append(raw[i:j].decode("utf-8"))
            except UnicodeDecodeError:
                out.extend(escapes[i:j])
            i = j
        return "".join(out)
    return _ESCAPES.sub(undo, uri)


class HttpRoutes:
    """``GET /player-count/<raw uri>``, ``/healthz``, ``/demo``, ``/web/<file>``."""

    def __init__(self, store: SpaceStore, healthy: Callable[[], bool],
                 web_dir: Path = WEB_DIR) -> None:
        self.store = store
        self.healthy = healthy
        self.web_dir = web_dir

    async def respond(self, conn: ServerConnection, request: Request) -> Response:
        target = request.path  # ASCII: non-ASCII arrives percent-encoded (see below)
        path = target.split("?", 1)[0]
        if path.startswith(PLAYER_COUNT):
            try:
                n = await self.store.count_first(count_candidates(target))
            except RegistryUnavailable:
                return _response(503, b"registry unavailable\n")
            return _response(200, str(n).encode(), cors=True)
        if path == "/healthz":
            ok = self.healthy()
            return _response(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
        if path == "/demo":
            return self._file("demo.html")
        if path.startswith("/web/"):
            return self._file(path[len("/web/"):])
        return _response(404, b"not found\n")

    def _file(self, name: str) -> Response:
        suffix = Path(name).suffix
        if not _NAME.fullmatch(name) or suffix not in _TYPES:
            return _response(404, b"not found\n")
        path = self.web_dir / name
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE:
                return _response(404, b"not found\n")
            body = path.read_bytes()
        except OSError:
            return _response(404, b"not found\n")
        return _response(200, body, _TYPES[suffix])
