"""The relay end to end: two shard processes on one relay port, real sockets on loopback.

One cluster serves the module (2 shards, RELAY_TIMEOUT=2, a relay key, LIMIT_SPEED=8 Mb/s);
tests use their own uuids and source addresses (127.0.0.x) so they do not disturb each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from relay_support import (
    PROXY,
    TIMEOUT,
    Relay,
    closed_within,
    cross_shard_pair,
    new_uuid,
    relay_env,
    running_relay,
)
from support import (
    Cluster,
    HubbubProcess,
    RedisServer,
    free_port_block,
    http_get,
    new_prefix,
    redis_server,
)

from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from loadtest.bench_relay import (
    WsClient,
    recv_exact,
    request_relay_frame,
)
from loadtest.cluster import rss_bytes


@pytest.fixture(scope="module", params=["splice", "buffered"])
def relay(request: pytest.FixtureRequest, redis_srv: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """Two shards; every test using it runs once per TCP <-> TCP pump (``RELAY_PUMP``)."""
    with running_relay(redis_srv.url, tmp_path_factory.mktemp("relay"),
                       RELAY_PUMP=str(request.param)) as relay:
        yield relay


@pytest.fixture(autouse=True)
def _close_sockets(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "relay" in request.fixturenames:
        request.getfixturevalue("relay").close_all()


def _pump(sock: socket.socket, total: int, seed: bytes, out: dict[str, str]) -> None:
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        sock.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
        block = block[1:] + block[:1]
    out["sent"] = h.hexdigest()


def _drain(sock: socket.socket, total: int, out: dict[str, str]) -> None:
    h = hashlib.sha256()
    got = 0
    while got < total:
        chunk = sock.recv(min(1 << 20, total - got))
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    out["got"] = h.hexdigest()
    out["n"] = str(got)


def _run_threads(*targets: Callable[[], None], timeout: float = 60) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "transfer did not finish"


# ------------------------------------------------------------------ pairing and data
def test_cross_shard_pair_moves_64_mib_each_way_intact(relay: Relay) -> None:
    a, b = cross_shard_pair(relay)
    size = 64 * 1024 * 1024
    a.settimeout(30)
    b.settimeout(30)
    ab: dict[str, str] = {}
    ba: dict[str, str] = {}
    _run_threads(lambda: _pump(a, size, b"a", ab), lambda: _drain(b, size, ab),
                 lambda: _pump(b, size, b"b", ba), lambda: _drain(a, size, ba))
    assert ab["n"] == ba["n"] == str(size)
    assert ab["sent"] == ab["got"]
    assert ba["sent"] == ba["got"]
    a.close()
    assert closed_within(b, 3), "closing one half must close the other"


def test_bytes_sent_before_pairing_are_forwarded(relay: Relay) -> None:
    uuid = new_uuid("early")
    a = relay.connect(uuid, extra=encode_frame(b"hello from a") + b"raw-tail")
    time.sleep(0.2)
    b = relay.connect(uuid, extra=b"from b")
    assert recv_exact(b, len(encode_frame(b"hello from a")) + 8) == (
        encode_frame(b"hello from a") + b"raw-tail")
    assert recv_exact(a, 6) == b"from b"
    a.close()
    b.close()


def test_ws_and_tcp_halves_are_bridged(relay: Relay) -> None:
    uuid = new_uuid("ws")
    w = relay.ws(uuid)
    t = relay.connect(uuid)
    t.sendall(encode_frame(b"") + encode_frame(b"to ws") + encode_frame(b"x" * 100_000))
    assert w.recv() == (2, b"to ws")  # the empty frame is not forwarded
    assert w.recv() == (2, b"x" * 100_000)
    w.send(b"to tcp")
    w.send(b"")
    w.send(b"again")
    dec = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    t.settimeout(5)
    while len(frames) < 2:
        frames += dec.feed(t.recv(65536))
    assert frames == [b"to tcp", b"again"]
    w.close()
    assert closed_within(t, 3)


def test_two_ws_halves_pair(relay: Relay) -> None:
    uuid = new_uuid("wsws")
    w1 = relay.ws(uuid)
    w2 = relay.ws(uuid)
    w1.send(b"one")
    assert w2.recv() == (2, b"one")
    w2.send(b"two")
    assert w1.recv() == (2, b"two")
    w1.close()
    w2.close()


# ------------------------------------------------------------------ timeouts
def test_unpaired_half_is_closed_after_the_timeout(relay: Relay) -> None:
    start = time.monotonic()
    a = relay.connect(new_uuid("alone"))
    assert closed_within(a, TIMEOUT + 3)
    assert time.monotonic() - start >= TIMEOUT - 0.2


def test_idle_pair_is_closed(relay: Relay) -> None:
    uuid = new_uuid("idle")
    a = relay.connect(uuid)
    b = relay.connect(uuid)
    a.sendall(b"x")
    assert recv_exact(b, 1) == b"x"
    start = time.monotonic()
    assert closed_within(a, TIMEOUT + 3) and closed_within(b, 1)
    assert time.monotonic() - start >= TIMEOUT - 0.2


def test_silent_connection_is_closed(relay: Relay) -> None:
    s = relay.raw()
    assert closed_within(s, TIMEOUT + 3)


# ------------------------------------------------------------------ refusals
def test_wrong_key_is_closed_silently(relay: Relay) -> None:
    uuid = new_uuid("key")
    bad = relay.connect(uuid, key="wrong")
    assert closed_within(bad, 2)
    good = relay.connect(uuid)
    assert closed_within(good, TIMEOUT + 3), "the good half must not pair with a refused one"


@pytest.mark.parametrize("first", [
    ((1 << 30) - 1 << 2 | 3).to_bytes(4, "little"),  # announces 1 GiB
    encode_frame(b"\xff" * 40),  # not a protobuf
    encode_frame(bytes.fromhex("320b0a09313233343536373839")),  # RegisterPeer
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP on the TCP port
])
def test_hostile_first_frames_are_closed(relay: Relay, first: bytes) -> None:
    s = relay.raw()
    s.sendall(first)
    start = time.monotonic()
    assert closed_within(s, TIMEOUT + 3)
    if first[:1] != b"G":
        assert time.monotonic() - start < 1.0
    assert all(p.healthy() for p in relay.shards)


def test_bad_websocket_upgrade_gets_426(relay: Relay) -> None:
    s = relay.raw(relay.port + 2)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 426")  # as every hubbub WebSocket port answers


def _admin(relay: Relay, *args: str) -> str:
    res = relay.cluster.hubbub("relay", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_blocklist_refuses_new_and_closes_running_pairs(relay: Relay) -> None:
    uuid = new_uuid("mid")
    a = relay.connect(uuid, source_ip="127.0.0.5")
    b = relay.connect(uuid)
    a.sendall(b"x")
    assert recv_exact(b, 1) == b"x"
    _admin(relay, "blocklist", "add", "::ffff:127.0.0.5", "127.0.0.4")
    assert closed_within(a, 3) and closed_within(b, 1), "a running pair with a blocked IP must end"
    refused = relay.connect(new_uuid("blocked"), source_ip="127.0.0.4")
    assert closed_within(refused, 1)
    assert _admin(relay, "blocklist", "list").split() == ["127.0.0.4", "127.0.0.5"]
    data = relay.workdir / "data" / "blocklist.txt"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (
            data.exists() and data.read_text() == "127.0.0.4\n127.0.0.5\n"):
        time.sleep(0.05)
    assert data.read_text() == "127.0.0.4\n127.0.0.5\n"
    # Behind a trusted proxy the forwarded address counts; from anyone else the header does not.
    proxied = relay.ws(new_uuid("proxied"), source_ip=PROXY, headers={"X-Real-IP": "127.0.0.4"})
    assert closed_within(proxied.sock, 1)
    uuid = new_uuid("spoof")
    spoofed = relay.ws(uuid, source_ip="127.0.0.6", headers={"X-Forwarded-For": "127.0.0.4"})
    partner = relay.connect(uuid)
    spoofed.send(b"not blocked")
    assert recv_exact(partner, len(encode_frame(b"not blocked"))) == encode_frame(b"not blocked")
    _admin(relay, "blocklist", "remove", "all")
    time.sleep(0.3)
    uuid = new_uuid("unblocked")
    a = relay.connect(uuid, source_ip="127.0.0.4")
    b = relay.connect(uuid)
    a.sendall(b"ok")
    assert recv_exact(b, 2) == b"ok"


def _flood(a: socket.socket) -> threading.Event:
    """Send from ``a`` as fast as it can in a thread, until the returned event is set."""
    stop = threading.Event()

    def send() -> None:
        block = b"r" * 65536
        with contextlib.suppress(OSError):
            while not stop.is_set():
                a.sendall(block)

    threading.Thread(target=send, daemon=True).start()
    return stop


def _recv_rate(b: socket.socket, seconds: float) -> float:
    """Bytes/s ``b`` receives over ``seconds``."""
    start = time.monotonic()
    got = 0
    while time.monotonic() - start < seconds:
        got += len(b.recv(1 << 20))
    return got / (time.monotonic() - start)


def _rate(a: socket.socket, b: socket.socket, seconds: float, skip: int = 128 * 1024) -> float:
    """Bytes/s b receives while a sends as fast as it can (after skipping the first burst)."""
    stop = _flood(a)
    b.settimeout(5)
    recv_exact(b, skip)
    rate = _recv_rate(b, seconds)
    stop.set()
    a.close()
    return rate


def test_blacklisted_ip_is_limited_to_limit_speed(relay: Relay) -> None:
    _admin(relay, "blacklist", "add", "127.0.0.3")
    time.sleep(0.3)
    uuid = new_uuid("slow")
    a = relay.connect(uuid, source_ip="127.0.0.3")
    b = relay.connect(uuid)
    expected = 8 * 1024 * 1024 / 8  # LIMIT_SPEED=8 "Mb/s" in hbbr units = 1 MiB/s
    # 1.8 s stays below the 2 s idle timeout of the test cluster.
    rate = _rate(a, b, 1.8, skip=256 * 1024)
    b.close()
    _admin(relay, "blacklist", "remove", "127.0.0.3")
    assert 0.8 * expected <= rate <= 1.2 * expected, f"{rate / expected:.2f} x LIMIT_SPEED"
    assert relay.metric('hubbub_relay_throttled_total{bucket="limit"}') > 0


@pytest.mark.parametrize("mode", ["tcp", "ws"])
def test_slow_reader_keeps_memory_bounded(relay: Relay, mode: str) -> None:
    uuid = new_uuid("slowread")
    reader: socket.socket | WsClient
    reader = relay.ws(uuid) if mode == "ws" else relay.connect(uuid)
    writer = relay.connect(uuid)
    time.sleep(0.2)
    rss_before = [rss_bytes(p.proc.pid) // 1024 for p in relay.shards]
    writer.setblocking(False)
    block = encode_frame(b"m" * 60_000)
    pushed = 0
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        try:
            pushed += writer.send(block)
        except BlockingIOError:
            time.sleep(0.01)
    rss_after = [rss_bytes(p.proc.pid) // 1024 for p in relay.shards]
    growth = max(a - b for a, b in zip(rss_after, rss_before, strict=True))
    assert pushed < 48 * 1024 * 1024, f"relay took {pushed} bytes for a reader that reads nothing"
    assert growth < 24 * 1024, f"shard RSS grew {growth} KiB"
    writer.close()
    reader.close()


# ------------------------------------------------------------------ presence, admin
def test_ports_load_and_usage(relay: Relay) -> None:
    uuid = new_uuid("usage")
    a = relay.connect(uuid)
    b = relay.connect(uuid)
    a.sendall(b"x" * 1000)
    recv_exact(b, 1000)
    deadline = time.monotonic() + 5
    while True:
        res = relay.cluster.hubbub("status", "--json")
        shards = [p for p in json.loads(res.stdout) if p["role"] == "shard"]
        if sum(p.get("load", {}).get("relay_pairs", 0) for p in shards) >= 1:
            break
        assert time.monotonic() < deadline, shards
        time.sleep(0.3)
    for p in shards:
        assert p["ports"]["relay"] == relay.port and p["ports"]["relay_ws"] == relay.port + 2
        assert "relay_bps" in p["load"]
    out = _admin(relay, "usage")
    assert " <-> " in out and "shard(s)" in out
    token = (relay.workdir / "data" / "admin_token").read_text().strip()
    rows = []
    for p in relay.shards:
        url = f"http://127.0.0.1:{p.ops_port}/relay/usage"
        assert http_get(url)[0] == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            rows += json.loads(resp.read())["pairs"]
    assert any(r["total_mb"] > 0 for r in rows)
    a.close()
    b.close()


# ------------------------------------------------------------------ shard failure
def test_killed_shard_leaves_pairs_on_other_shard_running(cluster: Cluster) -> None:
    port = free_port_block(3)
    env = relay_env(port, RELAY_TIMEOUT="5")
    shards = [cluster.start("shard", env=env) for _ in range(2)]
    relay = Relay(cluster, port, shards, cluster.workdir)
    try:
        _kill_scenario(relay, shards)
    finally:
        relay.close_all()


def _kill_scenario(relay: Relay, shards: list[HubbubProcess]) -> None:

    def pairs_of(p: HubbubProcess) -> float:
        m = re.search(r"^hubbub_relay_pairs ([0-9.]+)$", p.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    held: dict[int, list[tuple[socket.socket, socket.socket]]] = {0: [], 1: []}
    for _ in range(60):
        if held[0] and held[1]:
            break
        before = [pairs_of(p) for p in shards]
        uuid = new_uuid("kill")
        a = relay.connect(uuid)
        b = relay.connect(uuid)
        a.sendall(b"1")
        recv_exact(b, 1)
        after = [pairs_of(p) for p in shards]
        owner = 0 if after[0] > before[0] else 1
        held[owner].append((a, b))
    assert held[0] and held[1], "could not place pairs on both shards"
    shards[0].kill(signal.SIGKILL)
    for a, b in held[1]:
        a.sendall(b"still here")
        assert recv_exact(b, 10) == b"still here"
        b.sendall(b"and back")
        assert recv_exact(a, 8) == b"and back"
    for a, _ in held[0]:
        assert closed_within(a, 3)
    uuid = new_uuid("after")
    a = relay.connect(uuid)
    b = relay.connect(uuid)
    a.sendall(b"new")
    assert recv_exact(b, 3) == b"new"


def test_request_relay_frame_helper_matches_spec_tag() -> None:
    frame = request_relay_frame("u")
    assert frame[1:3] == b"\x92\x01"  # oneof field 18


def test_total_bandwidth_is_shared_by_the_host_shards(cluster: Cluster) -> None:
    port = free_port_block(3)
    env = relay_env(port, RELAY_TIMEOUT="5", TOTAL_BANDWIDTH="16")
    shards = [cluster.start("shard", env=env) for _ in range(2)]
    relay = Relay(cluster, port, shards, cluster.workdir)
    per_host = 16 * 1024 * 1024 / 8  # 2 MiB/s for the host, 1 MiB/s for each of 2 shards
    try:
        time.sleep(1.0)  # both shards have seen each other (presence ticks every 0.5 s)
        uuid = new_uuid("total")
        a = relay.connect(uuid)
        b = relay.connect(uuid)
        a.sendall(b"1")
        recv_exact(b, 1)
        owner = next(i for i, p in enumerate(shards)
                     if re.search(r"^hubbub_relay_pairs 1\.0$", p.metrics(), re.M))
        rate = _rate(a, b, 1.5)
        assert 0.8 * per_host / 2 <= rate <= 1.2 * per_host / 2, rate / (per_host / 2)
        shards[1 - owner].kill(signal.SIGKILL)
        time.sleep(2.5)  # the dead shard's presence expires; the survivor takes the whole host
        uuid = new_uuid("total2")
        a = relay.connect(uuid)
        b = relay.connect(uuid)
        rate = _rate(a, b, 1.5)
        assert 0.8 * per_host <= rate <= 1.2 * per_host, rate / per_host
    finally:
        relay.close_all()


def test_fast_pair_is_downgraded_to_limit_speed(cluster: Cluster) -> None:
    port = free_port_block(3)
    # SINGLE 8 Mb/s = 1 MiB/s; after 1 s a pair averaging above half of it drops to 2 Mb/s.
    env = relay_env(port, RELAY_TIMEOUT="5", SINGLE_BANDWIDTH="8",
               DOWNGRADE_START_CHECK="1", DOWNGRADE_THRESHOLD="0.5", LIMIT_SPEED="2")
    shards = [cluster.start("shard", env=env)]
    relay = Relay(cluster, port, shards, cluster.workdir)
    try:
        uuid = new_uuid("down")
        a = relay.connect(uuid)
        b = relay.connect(uuid)
        stop = _flood(a)
        b.settimeout(5)
        _recv_rate(b, 2.5)  # downgraded within ~2 s (1 s + the 1 s sweep)
        rate = _recv_rate(b, 1.5)
        stop.set()
        limit = 2 * 1024 * 1024 / 8
        assert 0.7 * limit <= rate <= 1.3 * limit, rate / limit
        assert relay.metric('hubbub_relay_throttled_total{bucket="downgrade"}') == 1
    finally:
        relay.close_all()


def test_pairs_form_and_run_while_redis_is_down(tmp_path: Path) -> None:
    with redis_server() as srv:
        cluster = Cluster(srv.url, new_prefix(), tmp_path)
        port = free_port_block(3)
        shards = [cluster.start("shard", env=relay_env(port, RELAY_TIMEOUT="10"))
                  for _ in range(2)]
        relay = Relay(cluster, port, shards, tmp_path)
        try:
            time.sleep(1.0)  # each shard has listed the host's shards once
            uuid = new_uuid("before")
            a = relay.connect(uuid)
            b = relay.connect(uuid)
            a.sendall(b"1")
            recv_exact(b, 1)
            sent = relay.metric('hubbub_relay_handoffs_total{outcome="sent"}')
            srv.stop()
            a.sendall(b"running pair")
            assert recv_exact(b, 12) == b"running pair"
            for i in range(8):  # owners by hashing: halves on different shards still meet
                uuid = new_uuid(f"down{i}")
                x = relay.connect(uuid)
                y = relay.connect(uuid)
                x.sendall(b"ok")
                assert recv_exact(y, 2) == b"ok"
            assert relay.metric('hubbub_relay_handoffs_total{outcome="sent"}') > sent
        finally:
            relay.close_all()
            cluster.stop_all()


def test_relay_admin_command_validates_input(relay: Relay) -> None:
    bad = relay.cluster.hubbub("relay", "blacklist", "add", "not-an-ip")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    assert relay.cluster.hubbub("relay", "blocklist", "add").returncode == 2
    assert relay.cluster.hubbub("relay", "nolist", "list").returncode == 2
    out = _admin(relay, "blacklist", "add", "10.1.1.1|10.1.1.2")
    assert out.strip() == "blacklist: 2 entries"
    assert _admin(relay, "blacklist", "remove", "all").strip() == "blacklist: 0 entries"
    usage = json.loads(_admin(relay, "usage", "--json"))
    assert len(usage) == 2 and all("pairs" in r for r in usage)
