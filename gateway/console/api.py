"""The console's JSON API (``/api/``) and the page's static files, as an aiohttp application.

Authentication: the session cookie set by ``POST /api/login`` (HttpOnly, SameSite=Strict,
Secure under TLS), or ``Authorization: Bearer <admin token>`` for scripts. Without either:
401. Writes need the ``admin`` role (else 403), a JSON body, and for cookie sessions the
``X-CSRF-Token`` the login returned (a page of another origin cannot read it). Every write is
written to the audit log with the caller, the action, the time and the source address.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from gateway.console import cluster, rustdesk, spaces
from gateway.console.accounts import AccountError, Accounts, Busy
from gateway.console.keys import console_key
from gateway.console.passwords import MAX_PASSWORD
from gateway.console.sampler import HISTORY_LEN
from gateway.rendezvous.store import Store
from hubbub.errors import RegistryError
from hubbub.net import ProxyList
from registry import Registry


__all__ = ["COOKIE", "ROUTES", "Caller", "ConsoleState", "api_markdown", "build_app", "view"]

log = logging.getLogger("hubbub.console")

COOKIE = "hubbub_session"
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html", "console.js": "application/javascript",
                "console.css": "text/css", "uplot.js": "application/javascript",
                "uplot.css": "text/css"}
MAX_BODY = 64 * 1024
VIEW_CACHE = 0.5
"""Seconds a view's data is shared by every request and live feed of this gateway."""
MAX_CACHE = 256
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'"),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a console user, or ``token`` for the admin bearer token."""

    user: str
    role: str
    csrf: str | None
    """None for bearer-token calls, which no other site can make with the browser's cookie."""
    source: str


@dataclass
class ConsoleState:
    """What the handlers share in one gateway."""

    registry: Registry
    accounts: Accounts
    store: Store
    admin_token: str
    proxies: ProxyList
    public_key: str
    tls: bool
    static: dict[str, bytes] = field(default_factory=dict)
    cache: dict[tuple[str, str], tuple[float, Any]] = field(default_factory=dict)


STATE = web.AppKey("state", ConsoleState)


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type="application/json", headers=headers or None)


def _error(status: int, text: str, **headers: str) -> web.Response:
    return _json({"error": text}, status, **headers)


def state_of(request: web.Request) -> ConsoleState:
    return request.app[STATE]


def client_ip(request: web.Request) -> str:
    return state_of(request).proxies.client_ip(request.remote or "", request.headers)


def _https(request: web.Request) -> bool:
    st = state_of(request)
    if st.tls:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    return forwarded and st.proxies.trusted(request.remote or "")


def _same_origin(request: web.Request) -> bool:
    """A browser's Origin header, when sent, must name this very host (or, behind a trusted
    proxy, the host the proxy says the browser asked for)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    hosts = {request.host}
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded and state_of(request).proxies.trusted(request.remote or ""):
        hosts.add(forwarded.split(",")[0].strip())
    return urlsplit(origin).netloc in hosts


# ---------------------------------------------------------------- callers
async def caller_of(request: web.Request) -> Caller | None:
    """The authenticated caller, or None.

    Raises:
        RegistryUnavailable: Redis did not answer (cookie sessions live there).
    """
    st = state_of(request)
    ip = client_ip(request)
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        got = auth.removeprefix("Bearer ").strip()
        if st.admin_token and hmac.compare_digest(got.encode(), st.admin_token.encode()):
            return Caller("token", "admin", None, ip)
        return None
    token = request.cookies.get(COOKIE, "")
    sess = await st.accounts.session(token) if token else None
    return None if sess is None else Caller(sess.user, sess.role, sess.csrf, ip)


OPEN_PATHS = frozenset({"/api/login"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SELF_SERVICE = frozenset({"/api/logout"})
"""Writes a viewer may make."""


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await _guarded(request, handler)
    except RegistryError as exc:
        resp = _error(503, f"control plane unreachable: {exc}")
    for k, v in _HEADERS.items():
        resp.headers.setdefault(k, v)
    if request.path.startswith("/api/"):
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not path.startswith("/api/"):
        return await handler(request)
    write = request.method in WRITE_METHODS
    if (write or path == "/api/live") and not _same_origin(request):
        return _error(403, "cross-origin request refused")
    if write and (request.content_length is None or request.content_length > MAX_BODY):
        # Answered before anything is read: a refused body never sits in memory.
        return _error(413 if request.content_length else 411,
                      f"send a JSON body of at most {MAX_BODY} bytes with a Content-Length")
    json_body = request.content_type == "application/json"
    if path in OPEN_PATHS:
        if write and not json_body:
            return _error(415, "send JSON (Content-Type: application/json)")
        return await handler(request)
    caller = await caller_of(request)
    if caller is None:
        return _error(401, "log in first (or send the admin token as a bearer token)")
    request["caller"] = caller
    if write and not json_body:
        return _error(415, "send JSON (Content-Type: application/json)")
    if write and path not in SELF_SERVICE:
        if caller.role != "admin":
            return _error(403, "this needs the admin role")
        if caller.csrf is not None and not hmac.compare_digest(
                request.headers.get("X-CSRF-Token", "").encode(), caller.csrf.encode()):
            return _error(403, "missing or wrong X-CSRF-Token")
    return await handler(request)


def caller(request: web.Request) -> Caller:
    who: Caller = request["caller"]
    return who


async def body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a write; a bad body is a 400."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}',
                                 content_type="application/json") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}',
                                 content_type="application/json")
    return data


def _str(data: dict[str, Any], name: str, limit: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": f"{name}: a string"}).decode(),
                                 content_type="application/json")
    return value


async def audited(request: web.Request, action: str, detail: str, ok: bool,
                  text: str) -> web.Response:
    """Write the audit entry of a write and answer it."""
    who = caller(request)
    await state_of(request).accounts.audit(who.user, action, detail, who.source, ok)
    return _json({"ok": ok, "text": text}, 200 if ok else 400)


# ------------------------------------------------------------------ views
ViewFn = Callable[[ConsoleState, str], Awaitable[Any]]


async def _cluster(st: ConsoleState, _arg: str) -> Any:
    return await cluster.cluster_view(st.registry)


async def _rustdesk(st: ConsoleState, _arg: str) -> Any:
    sample = await cluster.latest_sample(st.registry)
    return {**await rustdesk.summary(st.registry, sample),
            "relay_view": await rustdesk.relay_view(st.registry), "public_key": st.public_key}


async def _spaces(st: ConsoleState, uri: str) -> Any:
    sample = await cluster.latest_sample(st.registry) or {}
    out: dict[str, Any] = {"spaces": await spaces.spaces_view(st.registry),
                           "media": sample.get("media") or {},
                           "totals": sample.get("spaces") or {}}
    if uri:
        out["uri"] = uri
        out["players"] = await spaces.space_players(st.registry, uri)
    return out


async def _history(st: ConsoleState, _arg: str) -> Any:
    async with st.registry.guard("console_history"):
        raw: list[Any] = await st.registry.redis.lrange(
            console_key(st.registry, "history"), 0, HISTORY_LEN - 1)
    points = []
    for blob in reversed(raw):
        try:
            points.append(orjson.loads(blob))
        except orjson.JSONDecodeError:
            continue
    return {"points": points, "live": await cluster.latest_sample(st.registry)}


async def _audit(st: ConsoleState, _arg: str) -> Any:
    entries = await st.accounts.audit_log(200)
    users = await st.accounts.users()
    return {"entries": [e.to_json() for e in entries],
            "users": [u.to_json() for u in users]}


VIEWS: dict[str, ViewFn] = {"cluster": _cluster, "rustdesk": _rustdesk, "spaces": _spaces,
                            "history": _history, "audit": _audit}


async def view(st: ConsoleState, name: str, arg: str = "") -> Any:
    """A view's data, shared for ``VIEW_CACHE`` s by every caller of this gateway.

    Raises:
        KeyError: unknown view.
        RegistryUnavailable: Redis did not answer.
    """
    fn = VIEWS[name]
    key = (name, arg[:2048])
    now = time.monotonic()
    hit = st.cache.get(key)
    if hit is not None and now - hit[0] < VIEW_CACHE:
        return hit[1]
    data = await fn(st, arg)
    if len(st.cache) >= MAX_CACHE:
        st.cache.clear()
    st.cache[key] = (now, data)
    return data


def _view_handler(name: str, param: str = "") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return _json(await view(state_of(request), name, request.query.get(param, "")
                                if param else ""))
    return handle


# --------------------------------------------------------------- handlers
async def index(request: web.Request) -> web.StreamResponse:
    return web.Response(body=state_of(request).static["index.html"], content_type="text/html")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    data = state_of(request).static.get(name)
    if data is None:
        raise web.HTTPNotFound()
    return web.Response(body=data, content_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})


async def login(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    data = await body(request)
    name, password = data.get("user"), data.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or len(name) > 64 \
            or len(password) > MAX_PASSWORD:
        return _error(400, "send {user, password}")
    ip = client_ip(request)
    wait = await st.accounts.login_blocked(ip, name)
    if wait > 0:
        return _error(429, f"too many failed logins; try again in {wait:.0f}s",
                      **{"Retry-After": str(max(1, int(wait)))})
    try:
        user = await st.accounts.authenticate(name, password)
    except Busy as exc:
        return _error(503, str(exc), **{"Retry-After": "1"})
    if user is None:
        await st.accounts.login_failed(ip, name)
        await st.accounts.audit(name, "login", "wrong user or password", ip, ok=False)
        return _error(401, "wrong user or password")
    await st.accounts.login_succeeded(name)
    token, sess = await st.accounts.new_session(user, ip)
    await st.accounts.audit(name, "login", f"role {user.role}", ip)
    resp = _json({"user": sess.user, "role": sess.role, "csrf": sess.csrf})
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=_https(request),
                    path="/", max_age=7 * 24 * 3600)
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    token = request.cookies.get(COOKIE, "")
    if token:
        await state_of(request).accounts.end_session(token)
    resp = _json({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def me(request: web.Request) -> web.StreamResponse:
    who = caller(request)
    return _json({"user": who.user, "role": who.role, "csrf": who.csrf})


async def devices(request: web.Request) -> web.StreamResponse:
    found = await rustdesk.search_devices(state_of(request).store, request.query.get("q", ""))
    return _json({"devices": found})


async def change_id(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    old, new = _str(data, "id", 64), _str(data, "new_id", 64)
    ok, text = await rustdesk.change_device_id(state_of(request).store, old, new)
    return await audited(request, "change-id", f"{old} -> {new}", ok, text)


async def relay(request: web.Request) -> web.StreamResponse:
    return _json(await rustdesk.relay_view(state_of(request).registry))


def _ip_list(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name) or []
    if not isinstance(value, list) or len(value) > 1000 or not all(
            isinstance(v, str) and len(v) <= 64 for v in value):
        raise web.HTTPBadRequest(text=orjson.dumps({"error": f"{name}: a list of IPs"}).decode(),
                                 content_type="application/json")
    return [str(v) for v in value]


async def relay_list(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    name = _str(data, "list", 16)
    add, remove = _ip_list(data, "add"), _ip_list(data, "remove")
    detail = f"{name} +{','.join(add) or '-'} -{','.join(remove) or '-'}"
    try:
        entries = await rustdesk.edit_list(state_of(request).registry, name, add, remove)
    except ValueError as exc:
        return await audited(request, "relay-list", detail, False, str(exc))
    return await audited(request, "relay-list", detail, True,
                         f"{name}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")


async def key(request: web.Request) -> web.StreamResponse:
    return _json({"public_key": state_of(request).public_key})


async def kick(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    uri, pid = _str(data, "uri", 4096), data.get("player_id")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid <= 255:
        return _error(400, "player_id: 0-255")
    ok, text = await spaces.kick_player(state_of(request).registry, uri, pid)
    return await audited(request, "kick", f"{uri} player {pid}", ok, text)


async def users(request: web.Request) -> web.StreamResponse:
    found = await state_of(request).accounts.users()
    return _json({"users": [u.to_json() for u in found]})


async def user_add(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    name, role, pw = _str(data, "name", 64), _str(data, "role", 16), _str(data, "password")
    try:
        ok = await state_of(request).accounts.add_user(name, role, pw)
    except AccountError as exc:
        return await audited(request, "user-add", f"{name} ({role})", False, str(exc))
    return await audited(request, "user-add", f"{name} ({role})", ok,
                         "added" if ok else f"{name} exists")


async def user_passwd(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    name, pw = _str(data, "name", 64), _str(data, "password")
    try:
        await state_of(request).accounts.set_password(name, pw)
    except AccountError as exc:
        return await audited(request, "user-passwd", name, False, str(exc))
    return await audited(request, "user-passwd", name, True, "password changed")


async def user_remove(request: web.Request) -> web.StreamResponse:
    data = await body(request)
    name = _str(data, "name", 64)
    try:
        await state_of(request).accounts.remove_user(name)
    except AccountError as exc:
        return await audited(request, "user-remove", name, False, str(exc))
    return await audited(request, "user-remove", name, True, "removed")


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("POST", "/api/login", login, "`{user, password}` → `{user, role, csrf}` and the session "
                                  "cookie; 401 wrong, 429 rate-limited"),
    ("POST", "/api/logout", logout, "end the session"),
    ("GET", "/api/me", me, "the caller: `{user, role, csrf}`"),
    ("GET", "/api/cluster", _view_handler("cluster"),
     "hosts → processes (role, pid, slot, ports, state, age, load, CPU, RSS) and alerts"),
    ("GET", "/api/rustdesk", _view_handler("rustdesk"),
     "devices registered and online, rates and outcomes, relay pairs per shard, lists, key"),
    ("GET", "/api/devices", devices, "`?q=` ID or ID prefix: devices (online, last seen, "
                                     "address, key fingerprint)"),
    ("POST", "/api/devices/change-id", change_id, "admin: `{id, new_id}`"),
    ("GET", "/api/relay", relay, "relay pairs per shard with bandwidth; both IP lists"),
    ("POST", "/api/relay/lists", relay_list, "admin: `{list, add, remove}` (list `blocklist` "
                                             "or `blacklist`; IP lists)"),
    ("GET", "/api/key", key, "the server's public key (the clients' Key setting)"),
    ("GET", "/api/spaces", _view_handler("spaces", "uri"),
     "spaces with players and media shard, WebRTC figures; `?uri=` adds its players"),
    ("POST", "/api/spaces/kick", kick, "admin: `{uri, player_id}` disconnects a player"),
    ("GET", "/api/history", _view_handler("history"), "the last hour of headline rates"),
    ("GET", "/api/audit", _view_handler("audit"), "the audit log (newest first) and the users"),
    ("GET", "/api/users", users, "console users and roles"),
    ("POST", "/api/users", user_add, "admin: `{name, role, password}` (role `admin` or "
                                     "`viewer`)"),
    ("POST", "/api/users/password", user_passwd, "admin: `{name, password}`"),
    ("POST", "/api/users/remove", user_remove, "admin: `{name}` (not the last admin)"),
]


def api_markdown() -> str:
    """The README's API table."""
    rows = ["| method | path | what |", "|---|---|---|"]
    rows += [f"| {m} | `{p}` | {doc} |" for m, p, _, doc in ROUTES]
    rows.append("| GET | `/api/live` | WebSocket: send `{view, arg}`, get that view's data "
                "every second |")
    return "\n".join(rows)


def build_app(state: ConsoleState, live: Handler) -> web.Application:
    """The console application; ``live`` serves ``GET /api/live`` (the WebSocket feed)."""
    for name in STATIC_FILES:
        state.static[name] = (STATIC / name).read_bytes()
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/live", live)
    for method, path, handler, _doc in ROUTES:
        app.router.add_route(method, path, handler)
    return app
