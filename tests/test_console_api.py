"""The console's JSON API against a real gateway and Redis: who may do what.

401 without a session, 403 for a viewer's writes and for writes without the CSRF token, the
admin token as a bearer token, login rate limits, the audit log, ``hubbub user``.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rustdesk_sim import Peer
from support import (
    Cluster,
    HubbubProcess,
    free_port,
    free_port_block,
    new_prefix,
    redis_server,
    shard_env,
)
from test_spaces_e2e import _self_signed

from gateway.console.passwords import hash_password, login_hint, verify_password


PASSWORD = "correct horse battery"


@dataclass
class Console:
    gateway: HubbubProcess
    port: int
    cluster: Cluster

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return (self.cluster.workdir / "data" / "admin_token").read_text().strip()


class Client:
    """A browser-like API client: keeps the session cookie and sends the CSRF token."""

    def __init__(self, base: str, tls: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  urllib.request.HTTPSHandler(context=tls))
        self.csrf = ""

    def call(self, method: str, path: str, data: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        body = None if data is None else json.dumps(data).encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        if self.csrf:
            hdrs["X-CSRF-Token"] = self.csrf
        hdrs.update(headers or {})
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=hdrs)
        try:
            with self.opener.open(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw.startswith(b"{") else raw

    def login(self, user: str, password: str) -> int:
        status, got = self.call("POST", "/api/login", {"user": user, "password": password})
        if status == 200:
            self.csrf = got["csrf"]
        return status


def gateway_env(**extra: str | None) -> dict[str, str | None]:
    return {"CONSOLE_PORT": str(free_port()), "ADMIN_PASSWORD": PASSWORD,
            "RENDEZVOUS_PORT": str(free_port_block(4) + 1), "SPACES_PORT": str(free_port()),
            **extra}


@pytest.fixture
def console(cluster: Cluster) -> Iterator[Console]:
    env = gateway_env()
    port = int(env["CONSOLE_PORT"] or 0)
    gw = cluster.start("gateway", env=env)
    c = Console(gw, port, cluster)
    wait_for_admin(c.url, c.token())
    yield c


def wait_for_admin(url: str, token: str, tls: ssl.SSLContext | None = None) -> None:
    """Wait until the gateway has created ``admin`` (asking with the bearer token, so no failed
    login counts against the rate limits)."""
    deadline = time.monotonic() + 10
    auth = {"Authorization": f"Bearer {token}"}
    while True:
        with contextlib.suppress(OSError):
            status, got = Client(url, tls).call("GET", "/api/users", headers=auth)
            if status == 200 and got["users"]:
                return
        assert time.monotonic() < deadline, "no admin user"
        time.sleep(0.1)


def test_password_hashes_are_salted_scrypt() -> None:
    a, b = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret-pass", a) and not verify_password("other-pass", a)
    assert not verify_password("s3cret-pass", None) and not verify_password("x", "garbage")


def test_api_needs_a_session_and_the_admin_role_for_writes(console: Console) -> None:
    anon = Client(console.url)
    for path in ("/api/cluster", "/api/devices?q=x", "/api/spaces", "/api/me", "/api/history"):
        assert anon.call("GET", path)[0] == 401, path
    assert anon.call("POST", "/api/relay/lists", {"list": "blocklist", "add": ["10.0.0.1"]}
                     )[0] == 401
    admin = Client(console.url)
    assert admin.login("admin", PASSWORD) == 200
    cookie = next(c for c in admin.jar if c.name == "hubbub_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    status, cl = admin.call("GET", "/api/cluster")
    assert status == 200 and [p["role"] for p in cl["processes"]] == ["gateway"]
    assert cl["processes"][0]["ports"]["console"] == console.port
    status, got = admin.call("POST", "/api/users",
                             {"name": "vera", "role": "viewer", "password": "viewer-pass-1"})
    assert status == 200 and got["ok"], got
    # Writes from a cookie session need the CSRF token the login returned.
    no_csrf = Client(console.url)
    no_csrf.jar = admin.jar
    no_csrf.opener = admin.opener
    assert no_csrf.call("POST", "/api/relay/lists", {"list": "blocklist", "add": ["10.0.0.1"]}
                        )[0] == 403
    assert admin.call("POST", "/api/relay/lists", {"list": "blocklist", "add": ["10.0.0.1"]},
                      headers={"Origin": "http://evil.example"})[0] == 403
    viewer = Client(console.url)
    assert viewer.login("vera", "viewer-pass-1") == 200
    assert viewer.call("GET", "/api/cluster")[0] == 200
    assert viewer.call("GET", "/api/me")[1]["role"] == "viewer"
    for path, data in (("/api/relay/lists", {"list": "blocklist", "add": ["10.0.0.1"]}),
                       ("/api/devices/change-id", {"id": "abc", "new_id": "abcdefg"}),
                       ("/api/spaces/kick", {"uri": "x", "player_id": 1}),
                       ("/api/users", {"name": "x", "role": "admin", "password": "12345678"})):
        assert viewer.call("POST", path, data)[0] == 403, path
    # Admin writes land in the audit log: who, what, when, from where.
    status, got = admin.call("POST", "/api/relay/lists", {"list": "blocklist",
                                                          "add": ["::ffff:10.0.0.1"]})
    assert status == 200 and got["ok"]
    assert admin.call("GET", "/api/relay")[1]["blocklist"] == ["10.0.0.1"]
    entries = admin.call("GET", "/api/audit")[1]["entries"]
    assert entries[0]["user"] == "admin" and entries[0]["action"] == "relay-list"
    assert entries[0]["source"] == "127.0.0.1" and time.time() - entries[0]["t"] < 10
    # Logging out ends the session everywhere.
    assert admin.call("POST", "/api/logout", {})[0] == 200
    assert admin.call("GET", "/api/me")[0] == 401


def test_admin_token_works_as_a_bearer_token(console: Console) -> None:
    script = Client(console.url)
    auth = {"Authorization": f"Bearer {console.token()}"}
    status, cl = script.call("GET", "/api/cluster", headers=auth)
    assert status == 200 and cl["ok"]
    status, got = script.call("POST", "/api/relay/lists",
                              {"list": "blacklist", "add": ["10.1.2.3"]}, headers=auth)
    assert status == 200 and got["ok"]
    assert script.call("GET", "/api/me", headers={"Authorization": "Bearer wrong"})[0] == 401
    # A body over the limit is refused from its Content-Length, before it is read.
    status, got = script.call("POST", "/api/relay/lists",
                              {"list": "blacklist", "add": ["10.1.2.3"] * 8000}, headers=auth)
    assert status == 413 and "at most" in got["error"]
    entries = script.call("GET", "/api/audit", headers=auth)[1]["entries"]
    assert entries[0]["user"] == "token"


def test_login_is_rate_limited_per_user_and_per_source(console: Console) -> None:
    c = Client(console.url)
    for _ in range(5):
        assert c.login("admin", "wrong password") == 401
    # Refused now even with the right password, with the time to wait.
    status, got = c.call("POST", "/api/login", {"user": "admin", "password": PASSWORD})
    assert status == 429 and "try again" in got["error"]
    # Other users from the same source still get their five tries, until the source's ten.
    for i in range(5):
        assert c.login(f"nobody{i}", "wrong password") == 401
    assert c.login("nobody9", "wrong password") == 429


def test_user_command_shares_the_accounts(console: Console) -> None:
    cl = console.cluster
    r = cl.hubbub("user", "add", "olga", "--role", "admin", "--password-stdin")
    assert r.returncode == 2  # empty stdin: too short
    r = cl.hubbub("user", "list")
    assert r.returncode == 0 and r.stdout.split() == ["admin", "admin"]
    r = cl.hubbub("user", "add", "olga", "--role", "viewer")
    assert r.returncode == 0 and "added with password" in r.stdout, r.stderr
    generated = r.stdout.rsplit(" ", 1)[1].strip()
    assert Client(console.url).login("olga", generated) == 200
    assert cl.hubbub("user", "remove", "admin").returncode == 2  # the last admin stays
    assert cl.hubbub("user", "remove", "olga").returncode == 0
    assert Client(console.url).login("olga", generated) == 401
    admin = Client(console.url)
    admin.login("admin", PASSWORD)
    actions = [e["action"] for e in admin.call("GET", "/api/audit")[1]["entries"]]
    assert "user-add" in actions and "user-remove" in actions


def test_generated_admin_password_is_written_once(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    env = {"CONSOLE_PORT": str(port), "ADMIN_PASSWORD": None,
           "RENDEZVOUS_PORT": str(free_port_block(4) + 1), "SPACES_PORT": str(free_port())}
    cluster.start("gateway", env=env)
    path = cluster.workdir / "data" / "admin_password"
    deadline = time.monotonic() + 10
    c = Client(f"http://127.0.0.1:{port}")
    while not (path.exists() and c.login("admin", path.read_text().strip()) == 200):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert path.stat().st_mode & 0o777 == 0o600


def test_login_hint_shows_a_generated_password_once(tmp_path: Path) -> None:
    first = login_hint("", tmp_path)
    password = (tmp_path / "admin_password").read_text().strip()
    assert password in first and "shown once" in first
    again = login_hint("", tmp_path)
    assert password not in again and "admin_password" in again
    assert "ADMIN_PASSWORD" in login_hint("set-by-env", tmp_path)


def test_console_is_dual_stack_serves_tls_and_believes_only_trusted_proxies(
        cluster: Cluster, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    env = gateway_env(BIND=None, SSL_CERT=str(cert), SSL_KEY=str(key),
                      TRUSTED_PROXIES="127.0.0.1")
    cluster.start("gateway", env=env)
    tls = ssl.create_default_context(cafile=str(cert))
    tls.check_hostname = False
    port = env["CONSOLE_PORT"]
    token = (cluster.workdir / "data" / "admin_token").read_text().strip()
    wait_for_admin(f"https://127.0.0.1:{port}", token, tls)
    for host in ("127.0.0.1", "[::1]"):
        c = Client(f"https://{host}:{port}", tls)
        assert c.login("admin", PASSWORD) == 200
        cookie = next(k for k in c.jar if k.name == "hubbub_session")
        assert cookie.secure, "the session cookie is Secure under TLS"
    # From the trusted proxy (loopback) the forwarded address is the source ...
    proxied = Client(f"https://127.0.0.1:{port}", tls)
    assert proxied.call("POST", "/api/login", {"user": "admin", "password": "wrong-one"},
                        headers={"X-Forwarded-For": "203.0.113.9"})[0] == 401
    # A proxy that rewrites Host names the browser's host in X-Forwarded-Host.
    assert proxied.call("POST", "/api/login", {"user": "admin", "password": PASSWORD},
                        headers={"Origin": "https://console.example", "Host": "backend",
                                 "X-Forwarded-Host": "console.example"})[0] == 200
    # ... from anyone else it is not (::1 is not in TRUSTED_PROXIES).
    direct = Client(f"https://[::1]:{port}", tls)
    assert direct.call("POST", "/api/login", {"user": "admin", "password": "wrong-two"},
                       headers={"X-Forwarded-For": "203.0.113.10"})[0] == 401
    sources = [e["source"] for e in c.call("GET", "/api/audit")[1]["entries"]
               if not e["ok"]]
    assert sources == ["::1", "203.0.113.9"]  # newest first


def test_change_id_moves_a_device(console: Console) -> None:
    gw = console.gateway
    port = int(gw.env["RENDEZVOUS_PORT"])
    stamp = int(time.time() * 1000) % 10**6
    device, new_id = Peer("127.0.0.1", port, f"dev{stamp}"), f"mv{stamp}"
    device.register()
    admin = Client(console.url)
    assert admin.login("admin", PASSWORD) == 200
    found = admin.call("GET", f"/api/devices?q={device.id}")[1]["devices"]
    assert [d["id"] for d in found] == [device.id] and found[0]["online"]
    assert found[0]["fingerprint"].startswith("SHA256:")
    status, got = admin.call("POST", "/api/devices/change-id",
                             {"id": device.id, "new_id": "1bad"})
    assert status == 400 and "invalid ID" in got["text"]
    status, got = admin.call("POST", "/api/devices/change-id",
                             {"id": device.id, "new_id": new_id})
    assert status == 200 and got["ok"], got
    assert admin.call("GET", f"/api/devices?q={device.id}")[1]["devices"] == []
    moved = admin.call("GET", f"/api/devices?q={new_id}")[1]["devices"]
    assert moved and moved[0]["registered_ip"] == "127.0.0.1"
    # The command-line admin runs the very same operation.
    r = console.cluster.hubbub("admin", "change-id", new_id, device.id)
    assert r.returncode == 0 and "->" in r.stdout, r.stderr
    device.close()


def test_unreachable_control_plane_is_an_alert(tmp_path: Path) -> None:
    with redis_server() as srv:
        cluster = Cluster(srv.url, new_prefix(), tmp_path)
        try:
            env = gateway_env()
            cluster.start("gateway", env=env)
            url = f"http://127.0.0.1:{env['CONSOLE_PORT']}"
            token = (tmp_path / "data" / "admin_token").read_text().strip()
            wait_for_admin(url, token)
            auth = {"Authorization": f"Bearer {token}"}
            srv.stop()
            status, got = Client(url).call("GET", "/api/cluster", headers=auth)
            assert status == 200 and not got["ok"]
            assert got["alerts"][0]["level"] == "critical"
            assert "control plane" in got["alerts"][0]["text"]
            # Cookie sessions live in Redis: without it they cannot be checked.
            status, got = Client(url).call("GET", "/api/cluster",
                                           headers={"Cookie": "hubbub_session=x"})
            assert status == 503 and "control plane unreachable" in got["error"]
        finally:
            cluster.stop_all()


def test_a_process_gone_without_draining_is_missing(console: Console) -> None:
    cl = console.cluster
    shard = cl.start("shard", env=shard_env())
    auth = {"Authorization": f"Bearer {console.token()}"}
    api = Client(console.url)

    def view() -> dict[str, Any]:
        got: dict[str, Any] = api.call("GET", "/api/cluster", headers=auth)[1]
        return got

    deadline = time.monotonic() + 10
    while not any(p["role"] == "shard" and p["rss"] for p in view()["processes"]):
        assert time.monotonic() < deadline, "the sampler never saw the shard"
        time.sleep(0.2)
    shard.kill(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not any("missing" in a["text"] for a in view()["alerts"]):
        assert time.monotonic() < deadline, view()["alerts"]
        time.sleep(0.2)
    texts = [a["text"] for a in view()["alerts"]]
    assert any("no live shard" in t for t in texts)
    assert view()["missing"][0]["role"] == "shard"
