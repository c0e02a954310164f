"""The operator console in headless Chromium against a real cluster (2 gateways, 2 shards).

Logging in, the rate limit, every view with live data from real clients (a RustDesk device on
the WebSocket rendezvous port, relay halves, two Wired players), admin actions and a viewer's
lack of them. Each view is saved as a screenshot at a laptop and a phone size, into
``HUBBUB_SCREENSHOTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nacl.signing import SigningKey
from rustdesk_sim import Peer, WsClient, msg
from support import free_port
from test_browser_demo import CHROMIUM
from wired_client import WiredClient

from hubbub.wire.rustdesk.messages import pb
from loadtest.bench_relay import relay_connect
from loadtest.cluster import LocalCluster


pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is missing")]

PASSWORD = "console-test-password"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}
T = TypeVar("T")
DEVICES = 20


class Loop:
    """An asyncio loop on its own thread (Playwright's sync API owns the test's thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def console() -> Iterator[tuple[LocalCluster, str]]:
    port = free_port()
    with LocalCluster(gateways=2, shards=2, env={
            "CONSOLE_PORT": str(port), "ADMIN_PASSWORD": PASSWORD,
            "LOG_LEVEL": "info"}) as cluster:
        url = f"http://127.0.0.1:{port}"
        yield cluster, url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("HUBBUB_SCREENSHOTS") or tmp_path_factory.mktemp("console"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def hubbub(cluster: LocalCluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubbub", *args], input=stdin,
                          capture_output=True, text=True, env=cluster.base_env,
                          cwd=cluster.workdir, timeout=30)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: last {value!r}")


POLICY_ERRORS: list[str] = []
"""What the pages' Content-Security-Policy blocked, and script errors, over the whole module."""


def watch(page: Any) -> None:
    page.on("console", lambda m: POLICY_ERRORS.append(m.text)
            if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: POLICY_ERRORS.append(str(e)))


def login(browser: Any, url: str, user: str = "admin", password: str = PASSWORD,
          viewport: dict[str, int] = LAPTOP) -> Any:
    page = browser.new_context(viewport=viewport).new_page()
    watch(page)
    page.goto(url)
    page.fill("#login-user", user)
    page.fill("#login-password", password)
    page.click("#login-submit")
    page.wait_for_selector("#app:not([hidden])", timeout=10_000)
    return page


def show(page: Any, view: str) -> None:
    page.evaluate(f"location.hash = '#{view}'")
    until(page, "document.getElementById('live').classList.contains('on')")


def until(page: Any, expr: str, timeout: float = 30.0) -> Any:
    """Poll ``expr`` in the page until it is truthy (through the DevTools protocol: the
    console's Content-Security-Policy forbids the string evaluation ``wait_for_function`` uses,
    and the tests run with that policy in force)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {expr}")
        time.sleep(0.05)


def screenshot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def rows(page: Any, table: str) -> list[list[str]]:
    return list(page.evaluate(
        f"Array.from(document.querySelectorAll('table[data-table={table}] tbody tr'))"
        ".map(tr => Array.from(tr.children).map(td => td.textContent))"))


def test_login_refuses_a_wrong_password_and_then_rate_limits(
        console: tuple[LocalCluster, str], browser: Any) -> None:
    cluster, url = console
    r = hubbub(cluster, "user", "add", "rita", "--role", "viewer", "--password-stdin",
               stdin="rita-password\n")
    assert r.returncode == 0, r.stderr
    page = browser.new_context(viewport=LAPTOP).new_page()
    watch(page)
    page.goto(url)
    page.wait_for_selector("#login:not([hidden])")
    for _ in range(5):
        page.fill("#login-user", "rita")
        page.fill("#login-password", "not-her-password")
        page.click("#login-submit")
        until(page, "document.getElementById('login-error').textContent"
              " === 'wrong user or password'")
        page.evaluate("document.getElementById('login-error').textContent = ''")
    page.fill("#login-password", "rita-password")
    page.click("#login-submit")
    until(page, "document.getElementById('login-error').textContent"
          ".startsWith('too many failed logins')")
    assert page.is_hidden("#app")
    page.context.close()


def test_api_without_a_session_is_401(console: tuple[LocalCluster, str], browser: Any) -> None:
    _, url = console
    ctx = browser.new_context()
    for path in ("/api/cluster", "/api/devices?q=a", "/api/spaces", "/api/history"):
        assert ctx.request.get(url + path).status == 401
    assert ctx.request.post(url + "/api/relay/lists", data=json.dumps(
        {"list": "blocklist", "add": ["127.0.0.9"]}),
        headers={"Content-Type": "application/json"}).status == 401
    ctx.close()


def test_cluster_view_lists_every_process(console: tuple[LocalCluster, str], browser: Any,
                                          shots: Path) -> None:
    cluster, url = console
    r = hubbub(cluster, "status", "--json")
    assert r.returncode == 0, r.stderr
    expected = {p["id"] for p in json.loads(r.stdout)}
    assert len(expected) == 4
    page = login(browser, url)
    show(page, "cluster")
    got = wait_for(lambda: {row[-1] for row in rows(page, "processes")} == expected
                   and rows(page, "processes"), what="every process listed")
    assert {row[0] for row in got} == {"gateway", "shard"}
    assert all(row[4] == "up" for row in got)
    # CPU and memory come from the sampler's scrape of every process's /metrics.
    wait_for(lambda: all(row[7] != "-" for row in rows(page, "processes")), what="RSS shown")
    screenshot(page, shots, "cluster")
    phone = login(browser, url, viewport=PHONE)
    show(phone, "cluster")
    wait_for(lambda: len(rows(phone, "processes")) == 4, what="phone rows")
    screenshot(phone, shots, "cluster-phone")


def test_registered_device_is_online_in_search_then_offline(
        console: tuple[LocalCluster, str], browser: Any, shots: Path) -> None:
    cluster, url = console
    page = login(browser, url)
    show(page, "rustdesk")
    peer_id = f"console{int(time.time()) % 100000}"
    sk = SigningKey.generate()
    device = WsClient("127.0.0.1", cluster.target.rendezvous_port + 2)
    device.send(msg(register_pk=pb.RegisterPk(id=peer_id, uuid=uuidlib.uuid4().hex.encode(),
                                              pk=bytes(sk.verify_key))))
    reply = device.recv()
    assert reply is not None and reply.register_pk_response.result == pb.RegisterPkResponse.OK
    registered = time.monotonic()
    page.fill("#device-q", peer_id)
    page.click("#device-search")
    until(page,
          "Array.from(document.querySelectorAll('table[data-table=devices] tbody tr'))"
          f".some(tr => tr.children[0].textContent === '{peer_id}'"
          " && tr.children[1].textContent === 'online')", timeout=2)
    assert time.monotonic() - registered < 2.0
    found = rows(page, "devices")[0]
    assert found[3].startswith("127.0.0.1:") and found[5].startswith("SHA256:")
    # Counts and outcomes arrive with the sampler (device counts every few seconds).
    until(page, "document.querySelector('[data-stat=online] .v').textContent === '1'"
          " && document.querySelectorAll("
          "'table[data-table=outcomes] tbody tr td').length > 1",
          timeout=15)
    screenshot(page, shots, "rustdesk")
    phone = login(browser, url, viewport=PHONE)
    show(phone, "rustdesk")
    phone.fill("#device-q", peer_id)
    phone.click("#device-search")
    phone.wait_for_selector("table[data-table=devices]")
    phone.wait_for_selector("table[data-table=shards]")
    screenshot(phone, shots, "rustdesk-phone")
    device.close()
    until(page,
          "Array.from(document.querySelectorAll('table[data-table=devices] tbody tr'))"
          f".some(tr => tr.children[0].textContent === '{peer_id}'"
          " && tr.children[1].textContent === 'offline')", timeout=5)


def _closed(s: socket.socket, timeout: float = 3.0) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        s.close()


def test_blocking_an_address_makes_the_relay_refuse_it(
        console: tuple[LocalCluster, str], browser: Any, shots: Path) -> None:
    cluster, url = console
    port, key = cluster.target.relay_port, cluster.target.licence_key
    # A running pair first, so the relay view has something to show.
    pair_id = str(uuidlib.uuid4())
    a = relay_connect(port, pair_id, key)
    b = relay_connect(port, pair_id, key)
    a.sendall(b"hello")
    b.settimeout(5)
    assert b.recv(5) == b"hello"
    page = login(browser, url)
    show(page, "rustdesk")
    until(page, "document.querySelectorAll("
          "'table[data-table=shards] tbody tr').length === 2")
    page.fill("#blocklist-add", "127.0.0.7")
    page.click("#blocklist-add-btn")
    until(page, "document.getElementById('blocklist-chips').textContent"
          ".includes('127.0.0.7')")
    screenshot(page, shots, "rustdesk-relay")
    refused = relay_connect(port, str(uuidlib.uuid4()), key, source=("127.0.0.7", 0))
    assert _closed(refused), "the relay must refuse a blocked address"
    # Others still pair.
    uid = str(uuidlib.uuid4())
    c, d = relay_connect(port, uid, key, source=("127.0.0.8", 0)), relay_connect(port, uid, key)
    c.sendall(b"ok")
    d.settimeout(5)
    assert d.recv(2) == b"ok"
    for s in (a, b, c, d):
        s.close()
    audit = page.evaluate("fetch('/api/audit').then(r => r.json())")
    entry = audit["entries"][0]
    assert entry["action"] == "relay-list" and entry["user"] == "admin"
    assert "127.0.0.7" in entry["detail"]


def test_space_with_two_players_shows_two_and_one_can_be_disconnected(
        console: tuple[LocalCluster, str], browser: Any, shots: Path) -> None:
    cluster, url = console
    loop = Loop()
    uri = "https://example.org/console-test.glb"
    ws_url = f"ws://127.0.0.1:{cluster.target.spaces_port}"
    try:
        players = [loop.run(WiredClient.connect(ws_url)) for _ in range(2)]
        for i, p in enumerate(players):
            loop.run(p.send("set_name", f"player-{i}"))
            loop.run(p.join(uri))
        page = login(browser, url)
        show(page, "spaces")
        until(page,
              "Array.from(document.querySelectorAll('table[data-table=spaces] tbody tr'))"
              f".some(tr => tr.children[0].textContent === '{uri}'"
              " && tr.children[1].textContent === '2')")
        page.click(f"table[data-table=spaces] tbody tr >> text={uri}")
        until(page, "document.querySelectorAll("
              "'table[data-table=players] tbody tr').length === 2")
        assert sorted(r[1] for r in rows(page, "players")) == ["player-0", "player-1"]
        screenshot(page, shots, "spaces")
        phone = login(browser, url, viewport=PHONE)
        show(phone, "spaces")
        until(phone, "document.querySelectorAll("
              "'table[data-table=spaces] tbody tr').length >= 1")
        phone.click(f"table[data-table=spaces] tbody tr >> text={uri}")
        until(phone, "document.querySelectorAll("
              "'table[data-table=players] tbody tr').length === 2")
        screenshot(phone, shots, "spaces-phone")
        page.click("table[data-table=players] tbody tr:first-child button")
        until(page, "document.querySelectorAll("
              "'table[data-table=players] tbody tr').length === 1")
        kicked = wait_for(lambda: [p for p in players if p.closed.done()],
                          what="one player disconnected")
        assert len(kicked) == 1 and kicked[0].closed.result()[0] == 1008
    finally:
        for p in locals().get("players", []):
            with contextlib.suppress(Exception):
                loop.run(p.close())
        loop.close()


def test_history_and_audit_views(console: tuple[LocalCluster, str], browser: Any,
                                 shots: Path) -> None:
    cluster, url = console
    page = login(browser, url)
    show(page, "history")
    page.wait_for_selector(".uplot", timeout=10_000)
    # Some RustDesk traffic for the charts: devices register, then heartbeat twice a second.
    base = int(time.time()) % 10000
    devices = [Peer("127.0.0.1", cluster.target.rendezvous_port, f"hist{base}x{i}")
               for i in range(DEVICES)]
    count = "fetch('/api/history').then(r => r.json()).then(d => d.points.length)"
    before = page.evaluate(count)
    try:
        for d in devices:
            d.register()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and page.evaluate(count) < before + 3:
            for d in devices:
                d.heartbeat()
            time.sleep(0.5)
    finally:
        for d in devices:
            d.close()
    assert page.evaluate(count) >= before + 2
    page.evaluate("location.hash = '#cluster'")
    show(page, "history")
    page.wait_for_selector(".uplot")
    page.wait_for_timeout(500)
    screenshot(page, shots, "history")
    phone = login(browser, url, viewport=PHONE)
    show(phone, "history")
    phone.wait_for_selector(".uplot")
    phone.wait_for_timeout(500)
    screenshot(phone, shots, "history-phone")
    show(page, "audit")
    until(page, "document.querySelectorAll("
          "'table[data-table=audit] tbody tr').length > 1")
    assert "rita" in page.inner_text("table[data-table=users]")
    screenshot(page, shots, "audit")
    show(phone, "audit")
    phone.wait_for_selector("table[data-table=audit]")
    screenshot(phone, shots, "audit-phone")


def test_viewer_sees_everything_but_cannot_act(console: tuple[LocalCluster, str],
                                               browser: Any, shots: Path) -> None:
    cluster, url = console
    r = hubbub(cluster, "user", "add", "victor", "--role", "viewer", "--password-stdin",
               stdin="victor-password\n")
    assert r.returncode == 0, r.stderr
    page = login(browser, url, "victor", "victor-password")
    assert page.inner_text("#who").split() == ["victor", "viewer"]
    show(page, "rustdesk")
    until(page, "document.getElementById('public-key').textContent.length > 20")
    assert page.locator(".admin").count() == 0
    assert page.locator("#blocklist-add-btn").count() == 0
    show(page, "audit")
    page.wait_for_selector("table[data-table=users]")
    assert page.locator("#new-user").count() == 0
    screenshot(page, shots, "viewer")
    status = page.evaluate(
        "fetch('/api/me').then(r => r.json()).then(me => fetch('/api/relay/lists', {"
        "method: 'POST', headers: {'Content-Type': 'application/json',"
        " 'X-CSRF-Token': me.csrf}, body: JSON.stringify({list: 'blocklist',"
        " add: ['127.0.0.9']})})).then(r => r.status)")
    assert status == 403


def test_pages_ran_within_their_content_security_policy() -> None:
    """Runs last: no inline style or script was blocked, no script error, in any test above."""
    assert POLICY_ERRORS == []
