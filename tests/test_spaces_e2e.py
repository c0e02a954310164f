"""End-to-end tests of the spaces host: real gateway processes, real Redis, Wired clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import Cluster, HubbubProcess, free_port, free_port_block, http_get, shard_env
from websockets.exceptions import ConnectionClosed
from wired_client import WiredClient

from hubbub.contracts.media import MediaCall, MediaCallReply, MediaLost, MediaMessage, MediaPush
from hubbub.errors import RemoteError
from hubbub.wire.wired.positions import decode_batch
from registry import Registry


URI = "https://example.org/space.glb"


def start_gateway(cluster: Cluster, **env: str) -> tuple[HubbubProcess, int]:
    """A gateway on its own spaces port (and free ports for every other listener)."""
    port = free_port()
    full = {"SPACES_PORT": str(port), "RENDEZVOUS_PORT": str(free_port_block(4) + 1), **env}
    return cluster.start("gateway", env=full), port


async def connect(port: int, path: str = "/") -> WiredClient:
    return await WiredClient.connect(f"ws://127.0.0.1:{port}{path}")


def count(port: int, uri: str = URI) -> int:
    status, body = http_get(f"http://127.0.0.1:{port}/player-count/{uri}")
    assert status == 200
    return int(body)


async def test_single_gateway_every_subject(cluster: Cluster) -> None:
    gw, port = start_gateway(cluster)
    a = await connect(port)
    await a.send("set_name", "ann")
    await a.send("set_avatar", "https://x/ann.vrm")
    aid = await a.join(URI)
    # the setters before any join only change local state; no broadcast (no space yet)
    assert a.subjects() == ["join_success"]
    b = await connect(port, "/any/path")
    await b.send("set_address", "0xb0b")
    bid = await b.join(URI)
    assert aid != bid and 0 <= bid <= 255
    # late joiner: exactly one player_joined beforeYou per present player, then join_success
    assert b.frames[0] == ("player_joined", {"playerId": aid, "name": "ann",
                                             "avatar": "https://x/ann.vrm", "address": None,
                                             "beforeYou": True})
    assert b.frames[1] == ("join_success", {"uri": URI, "playerId": bid})
    joined = await a.wait_for("player_joined")
    assert joined == {"playerId": bid, "name": None, "avatar": None, "address": "0xb0b"}

    # broadcasts reach everybody, the sender included
    await b.send("chat", "hello")
    for c in (a, b):
        chat = await c.wait_for("player_chat")
        assert chat["playerId"] == bid and chat["text"] == "hello"
        assert abs(chat["timestamp"] - time.time() * 1000) < 10_000
    await a.send("set_grounded", False)
    await a.send("set_name", "anna")
    await a.send("set_avatar", None)
    await a.send("set_address", "0xa")
    for c in (a, b):
        assert await c.wait_for("player_grounded") == {"playerId": aid, "grounded": False}
        assert await c.wait_for("player_name") == {"playerId": aid, "name": "anna"}
        assert await c.wait_for("player_avatar") == {"playerId": aid, "avatar": None}
        assert await c.wait_for("player_address") == {"playerId": aid, "address": "0xa"}
    assert count(port) == 2
    text = gw.metrics()
    assert "hubbub_spaces_players 2.0" in text
    assert 'hubbub_spaces_messages_in_total{subject="chat"} 1.0' in text
    assert http_get(f"http://127.0.0.1:{gw.ops_port}/spaces")[0] == 401
    token = (Path(gw.env["HUBBUB_DATA"]) / "admin_token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{gw.ops_port}/spaces",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=3) as resp:
        view = orjson.loads(resp.read())
    assert view["sockets"] == 2 and sorted(view["spaces"][URI]) == sorted([aid, bid])

    # a third player sees the stored profile of the others
    c3 = await connect(port)
    await c3.join(URI)
    before = {d["playerId"]: d for d in c3.all("player_joined")}
    assert before[aid] == {"playerId": aid, "name": "anna", "avatar": None, "address": "0xa",
                           "beforeYou": True}
    assert before[bid]["address"] == "0xb0b"

    # repeated join is a no-op
    await b.send("join", URI)
    await b.send("leave", URI)
    for c in (a, c3):
        assert await c.wait_for("player_left") == {"playerId": bid}
    await b.settle(0.2)
    assert "player_left" not in b.subjects()
    assert b.subjects().count("join_success") == 1
    # leave of a space not joined
    await b.send("leave", URI)
    err = await b.wait_for("error")
    assert err["code"] == "not_joined" and err["subject"] == "leave"

    # disconnect = leave everywhere
    await c3.close()
    assert await a.wait_for("player_left") == {"playerId": c3.player_ids[URI]}
    assert count(port) == 1
    await a.close()
    await b.close()
    deadline = time.monotonic() + 3
    while count(port) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert count(port) == 0


async def test_one_socket_in_two_spaces(cluster: Cluster) -> None:
    _, port = start_gateway(cluster)
    a, b = await connect(port), await connect(port)
    await a.join("s1")
    await a.join("s2")
    await b.join("s2")
    await b.send("chat", "x")
    got = await a.wait_for("player_chat")
    assert got["playerId"] == b.player_ids["s2"]
    await a.send("chat", "y")  # one player_chat per joined space, with that space's id
    chats = [await a.wait_for("player_chat") for _ in range(2)]
    assert sorted(c["playerId"] for c in chats) == sorted(a.player_ids.values())
    assert count(port, "s1") == 1 and count(port, "s2") == 2
    await a.close()
    await b.close()


async def test_two_gateways_share_a_space(cluster: Cluster) -> None:
    _, p1 = start_gateway(cluster)
    _, p2 = start_gateway(cluster)
    a = await connect(p1)
    b = await connect(p2)
    await a.send("set_name", "ann")
    aid = await a.join(URI)
    bid = await b.join(URI)
    assert b.frames[0][1]["beforeYou"] and b.frames[0][1]["name"] == "ann"
    assert (await a.wait_for("player_joined"))["playerId"] == bid
    assert count(p1) == count(p2) == 2
    await a.send("chat", "cross")
    assert (await b.wait_for("player_chat"))["playerId"] == aid
    assert (await a.wait_for("player_chat"))["playerId"] == aid

    # batched positions across gateways: byte 0 is overwritten with the real playerId
    record = bytes([99]) + bytes(range(1, 21))
    await a.send_raw(record)
    await b.send("subscribe_positions", True)
    await b.send_raw(bytes([bid]) + bytes(20))
    batches = await b.wait_binary(timeout=3)
    seen: dict[int, bytes] = {}
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        for frame in b.binary:
            recs = decode_batch(frame)
            assert recs is not None
            seen.update({r[0]: r for r in recs})
        await asyncio.sleep(0.05)
    assert seen[aid] == bytes([aid]) + record[1:]
    assert seen[bid] == bytes([bid]) + bytes(20)
    assert batches

    await b.close()
    assert await a.wait_for("player_left") == {"playerId": bid}
    assert count(p2) == 1
    await a.close()


async def test_positions_are_opt_in(cluster: Cluster) -> None:
    _, port = start_gateway(cluster)
    a, b, c = await connect(port), await connect(port), await connect(port)
    for x in (a, b, c):
        await x.join(URI)
    await c.send("subscribe_positions", False)
    await c.send_raw(bytes(21))
    for _ in range(3):
        await a.send_raw(bytes(21))
        await asyncio.sleep(0.07)
    await a.wait_binary()
    await c.settle(0.3)
    assert b.binary == [] and c.binary == []
    await b.send_raw(b"short")
    assert (await b.wait_for("error"))["code"] == "invalid_data"
    lone = await connect(port)
    await lone.send_raw(bytes(21))
    assert (await lone.wait_for("error"))["code"] == "not_joined"
    for x in (a, b, c, lone):
        await x.close()


async def test_http_routes(cluster: Cluster) -> None:
    _, port = start_gateway(cluster)
    base = f"http://127.0.0.1:{port}"
    assert http_get(f"{base}/healthz") == (200, b"ok\n")
    assert http_get(f"{base}/player-count/never-seen") == (200, b"0")
    assert http_get(f"{base}/player-count/https://x/y.glb?q=1") == (200, b"0")
    assert http_get(f"{base}/nothing")[0] == 404
    assert http_get(f"{base}/web/..%2fconfig.py")[0] == 404
    assert http_get(f"{base}/web/.hidden.js")[0] == 404
    assert http_get(f"{base}/web/x.py")[0] == 404


async def test_limits(cluster: Cluster) -> None:
    _, port = start_gateway(cluster, SPACES_PER_SOCKET="2", SPACES_MAX_NAME="8",
                            SPACES_MAX_FRAME="20000", SPACES_SOCKETS_PER_IP="3")
    a = await connect(port)
    await a.send_raw("{not json")
    assert (await a.wait_for("error")) == {"code": "malformed",
                                           "message": "frame is not valid JSON", "subject": None}
    await a.send("fly", 1)
    assert (await a.wait_for("error"))["code"] == "unknown_subject"
    await a.send("set_name", "123456789")
    assert (await a.wait_for("error")) == {"code": "too_large", "subject": "set_name",
                                           "message": "set_name: longer than 8 characters"}
    await a.send("set_grounded", "no")
    assert (await a.wait_for("error"))["code"] == "invalid_data"
    await a.join("s1")
    await a.join("s2")
    await a.send("join", "s3")
    assert (await a.wait_for("error"))["code"] == "too_many_spaces"
    # the connection survives isolated errors; a 16 KiB frame (the original's cap) is accepted
    await a.send("chat", "x" * 900)
    assert (await a.wait_for("player_chat"))["text"].startswith("x")
    await a.send_raw(orjson.dumps({"subject": "chat", "data": "y", "pad": "z" * 16000}).decode())
    assert (await a.wait_for("player_chat", where=lambda d: d["text"] == "y"))
    # beyond SPACES_MAX_FRAME the socket is closed with 1009
    await a.send_raw("z" * 30000)
    assert (await a.wait_closed())[0] == 1009
    await a.close()
    deadline = time.monotonic() + 5
    while count(port, "s1") and time.monotonic() < deadline:  # the server has let it go
        await asyncio.sleep(0.05)

    # sockets per IP
    others = [await connect(port) for _ in range(3)]
    extra = await connect(port)
    err = await extra.wait_for("error")
    assert err["code"] == "too_many_connections"
    assert (await extra.wait_closed())[0] == 1008
    await extra.close()
    for o in others:
        await o.close()


async def test_rate_limit_then_disconnect(cluster: Cluster) -> None:
    _, port = start_gateway(cluster, SPACES_RATE="5", SPACES_BURST="5")
    a = await connect(port)
    await a.join(URI)
    for _ in range(10):
        await a.send("chat", "spam")
    err = await a.wait_for("error")
    assert err["code"] == "rate_limited"
    assert len(a.all("player_chat")) + 0 <= 5
    # continued abuse closes the socket with 1008
    with contextlib.suppress(ConnectionClosed):
        for _ in range(80):
            await a.send("chat", "spam")
    assert (await a.wait_closed())[0] == 1008
    await a.close()


async def test_abuse_by_invalid_frames_closes(cluster: Cluster) -> None:
    _, port = start_gateway(cluster)
    a = await connect(port)
    with contextlib.suppress(ConnectionClosed):  # the server may close before the last one
        for _ in range(60):
            await a.send_raw("?")
    assert (await a.wait_closed())[0] == 1008
    assert len(a.all("error")) >= 40
    await a.close()


async def test_idle_socket_is_closed(cluster: Cluster) -> None:
    _, port = start_gateway(cluster, SPACES_IDLE_TIMEOUT="1")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    start = time.monotonic()
    data = b""
    s.settimeout(6)
    try:
        while chunk := s.recv(4096):  # pings arrive but are never answered
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    s.close()
    assert data.startswith(b"HTTP/1.1 101")
    assert time.monotonic() - start < 5.5


async def test_space_full(cluster: Cluster, redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    _, port = start_gateway(cluster)
    r = aioredis.Redis.from_url(redis_url)
    key = f"{prefix}space:full:members"
    fake = orjson.dumps({"g": "gateway:elsewhere", "s": "x/1", "name": None, "avatar": None,
                         "address": None, "grounded": True})
    await r.hset(key, mapping={str(i): fake for i in range(255)})
    a = await connect(port)
    aid = await a.join("full")
    assert aid not in range(255) or aid == 255
    assert aid == 255
    assert len(a.all("player_joined")) == 255
    b = await connect(port)
    await b.send("join", "full")
    err = await b.wait_for("error")
    assert err == {"code": "space_full", "message": "the space is full (256 players)",
                   "subject": "join"}
    assert "join_success" not in b.subjects()
    await a.close()
    await b.close()
    await r.aclose()


async def test_sigkill_gateway_players_leave(cluster: Cluster) -> None:
    # the default presence TTL: cleanup must still take less than 5 s
    g1, p1 = start_gateway(cluster, PRESENCE_TTL="5")
    _, p2 = start_gateway(cluster, PRESENCE_TTL="5")
    _, p3 = start_gateway(cluster, PRESENCE_TTL="5")
    doomed = [await connect(p1) for _ in range(3)]
    ids = [await d.join(URI) for d in doomed]
    survivors = [await connect(p2), await connect(p3)]
    for s in survivors:
        await s.join(URI)
    assert count(p2) == 5
    t0 = time.monotonic()
    g1.kill()
    for s in survivors:
        left = {(await s.wait_for("player_left", timeout=5))["playerId"] for _ in ids}
        assert left == set(ids)
    assert time.monotonic() - t0 < 5
    assert count(p2) == count(p3) == 2
    for s in survivors:  # two gateways watched, exactly one cleaned up: one notice each
        await s.settle(0.5)
        assert sorted(d["playerId"] for d in s.all("player_left")) == sorted(ids)
    for c in (*survivors, *doomed):
        await c.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls(cluster: Cluster, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    _, port = start_gateway(cluster, SSL_CERT=str(cert), SSL_KEY=str(key))
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    a = await WiredClient.connect(f"wss://127.0.0.1:{port}", ssl_context=ctx)
    pid = await a.join(URI)
    assert 0 <= pid <= 255

    def https_count() -> bytes:
        import urllib.request
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/player-count/{URI}",
                                    context=ctx, timeout=3) as resp:
            body: bytes = resp.read()
            return body

    assert await asyncio.to_thread(https_count) == b"1"
    await a.close()


async def test_media_without_shard_is_an_explicit_error(cluster: Cluster) -> None:
    _, port = start_gateway(cluster)
    a = await connect(port)
    await a.send("get_router_rtp_capabilities")
    await a.join(URI)
    await a.send("create_transport", {"type": "producer"})
    for subject in ("get_router_rtp_capabilities", "create_transport"):
        err = await a.wait_for("error", where=lambda d, s=subject: d["subject"] == s)
        assert err["code"] == "media_unavailable"
    await a.close()


class FakeShard:
    """A media shard stand-in speaking the gateway↔shard contract over the real registry."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.reg = Registry(redis_url, prefix, "shard", "testhost",
                            info={"media": {"udp": 1, "tcp": 0},
                                  "load": {"media_sessions": 0, "media_spaces": 0}}, ttl=1.5)
        self.calls: list[dict[str, Any]] = []
        self.quiet = False
        self.reg.handle(MediaCall, self.on_call)

    def on_call(self, req: MediaCall, sender: str) -> MediaCallReply:
        self.calls.append({"session": req.session, "gateway": req.gateway, "op": req.op,
                           "data": req.data, "spaces": req.spaces})
        return MediaCallReply(tuple(MediaMessage(s, d) for s, d in self.answer(req.op, req.data)))

    def answer(self, op: str, data: Any) -> list[tuple[str, Any]]:
        if self.quiet:
            return []
        if op == "get_router_rtp_capabilities":
            return [("router_rtp_capabilities", {"codecs": [{"mimeType": "audio/opus"}]})]
        if op == "create_transport":
            return [("transport_created", {"type": data["type"], "options": {"id": "t1"}})]
        if op == "produce":
            return [("producer_id", "prod-1")]
        if op == "produce_data":
            return [("data_producer_id", f"data-{data['streamId']}")]
        if op == "resume_audio":
            raise RemoteError("no_consumers", "nothing to resume")
        return []


async def test_media_relay_contract(cluster: Cluster, redis_url: str, prefix: str) -> None:
    gw, port = start_gateway(cluster)
    shard = FakeShard(redis_url, prefix)
    await shard.reg.start()
    assert await shard.reg.wait_ready(5)
    try:
        await asyncio.sleep(1.0)  # the gateway refreshes its shard view every 0.5 s
        a = await connect(port)
        await a.send("get_router_rtp_capabilities")
        caps = await a.wait_for("router_rtp_capabilities")
        assert caps == {"codecs": [{"mimeType": "audio/opus"}]}
        pid = await a.join(URI)
        await a.send("create_transport", {"type": "producer"})
        assert (await a.wait_for("transport_created"))["options"]["id"] == "t1"
        dtls = {"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": "AA"}]}
        await a.send("connect_transport", {"type": "producer", "dtlsParameters": dtls})
        await a.send("set_rtp_capabilities", {"codecs": [], "headerExtensions": []})
        await a.send("produce_data", {"streamId": 3, "ordered": False, "maxRetransmits": 0})
        assert await a.wait_for("data_producer_id") == "data-3"
        await a.send("produce", {"codecs": []})
        assert await a.wait_for("producer_id") == "prod-1"
        await a.send("resume_audio")
        err = await a.wait_for("error")
        assert err["code"] == "media_error" and err["subject"] == "resume_audio"
        assert "nothing to resume" in err["message"]
        # a second capabilities request is served from the gateway's cache
        await a.send("get_router_rtp_capabilities")
        await a.wait_for("router_rtp_capabilities")

        ops = [c["op"] for c in shard.calls]
        assert ops == ["get_router_rtp_capabilities", "create_transport", "connect_transport",
                       "set_rtp_capabilities", "produce_data", "produce", "resume_audio"]
        assert shard.calls[2]["data"] == {"type": "producer", "dtlsParameters": dtls}
        call = shard.calls[1]
        assert call["spaces"] == {URI: pid} and call["data"] == {"type": "producer"}
        session, gateway = call["session"], call["gateway"]
        assert session.startswith(gateway + "/")
        import redis.asyncio as aioredis
        r = aioredis.Redis.from_url(redis_url)
        assert (await r.get(f"{prefix}space:{URI}:shard")) == shard.reg.id.encode()

        # pushes from the shard reach the socket in order
        consumer = {"playerId": 3, "consumerId": "c", "producerId": "p", "rtpParameters": {}}
        assert await shard.reg.send(gateway, MediaPush(session, (
            MediaMessage("create_consumer", consumer),
            MediaMessage("create_data_consumer", {"playerId": 3}))))
        assert await a.wait_for("create_consumer") == consumer
        assert await a.wait_for("create_data_consumer") == {"playerId": 3}

        # leave and join are lifecycle calls on the bound shard
        await a.send("leave", URI)
        await a.join("other")
        await asyncio.sleep(0.2)
        assert [c["op"] for c in shard.calls][-2:] == ["leave", "join"]
        assert shard.calls[-1]["data"] == {"uri": "other", "playerId": a.player_ids["other"]}

        # a socket that goes away is closed on its shard
        b = await connect(port)
        await b.join(URI)
        await b.send("create_transport", {"type": "consumer"})
        await b.wait_for("transport_created")
        b_session = shard.calls[-1]["session"]
        assert b_session != session
        await b.close()
        await asyncio.sleep(0.3)
        assert (shard.calls[-1]["op"], shard.calls[-1]["session"]) == ("close", b_session)

        # losing the shard closes the socket with 1012
        assert await shard.reg.send(gateway, MediaLost(session, "draining"))
        assert (await a.wait_closed())[0] == 1012
        await a.close()
        await r.aclose()
    finally:
        await shard.reg.close()
    assert gw.proc.poll() is None


async def test_resume_audio_bursts_are_coalesced(cluster: Cluster, redis_url: str,
                                                 prefix: str) -> None:
    # The reference client sends one resume_audio per consumer: hundreds when joining a full
    # space. They must neither trip the rate limit nor reach the shard one by one.
    _, port = start_gateway(cluster, SPACES_RATE="5", SPACES_BURST="5")
    shard = FakeShard(redis_url, prefix)
    shard.quiet = True
    await shard.reg.start()
    assert await shard.reg.wait_ready(5)
    try:
        await asyncio.sleep(1.0)
        a = await connect(port)
        await a.join(URI)
        await a.send("create_transport", {"type": "consumer"})
        await asyncio.sleep(0.3)
        for _ in range(300):
            await a.send("resume_audio")
        await asyncio.sleep(0.5)
        resumes = [c for c in shard.calls if c["op"] == "resume_audio"]
        assert 2 <= len(resumes) <= 20
        assert "error" not in a.subjects() and not a.closed.done()
        await a.close()
    finally:
        await shard.reg.close()


async def test_session_closed_when_shard_dies(cluster: Cluster, redis_url: str,
                                              prefix: str) -> None:
    _, port = start_gateway(cluster)
    shard = FakeShard(redis_url, prefix)
    await shard.reg.start()
    assert await shard.reg.wait_ready(5)
    await asyncio.sleep(1.0)
    a = await connect(port)
    await a.join(URI)
    await a.send("create_transport", {"type": "consumer"})
    await a.wait_for("transport_created")
    await shard.reg.close()  # presence gone
    code, reason = await a.wait_closed(timeout=5)
    assert code == 1012 and reason == "media shard restarted"
    await a.close()


@pytest.mark.parametrize("path", ["/demo", "/web/demo.html"])
def test_web_routes_unit(tmp_path: Path, path: str) -> None:
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from gateway.spaces.http import HttpRoutes

    (tmp_path / "demo.html").write_text("<html></html>")
    routes = HttpRoutes(None, lambda: True, web_dir=tmp_path)  # type: ignore[arg-type]
    resp = asyncio.run(routes.respond(None, Request(path, Headers())))  # type: ignore[arg-type]
    assert resp.status_code == 200 and resp.body == b"<html></html>"
    assert resp.headers["Content-Type"].startswith("text/html")
    missing = asyncio.run(routes.respond(None, Request("/web/app.js", Headers())))  # type: ignore[arg-type]
    assert missing.status_code == 404


async def test_real_shard_answers_media_subjects(cluster: Cluster) -> None:
    env = shard_env(rtc_ports=8)
    cluster.start("shard", env=env)
    _, port = start_gateway(cluster, **env)
    a = await connect(port)
    deadline = time.monotonic() + 5
    while True:  # until the gateway has seen the shard's presence
        await a.send("get_router_rtp_capabilities")
        with contextlib.suppress(TimeoutError):
            caps = await a.wait_for("router_rtp_capabilities", timeout=0.5)
            break
        assert time.monotonic() < deadline, a.frames
    assert any(c["mimeType"].lower() == "audio/opus" for c in caps["codecs"])
    await a.join(URI)
    await a.send("create_transport", {"type": "producer"})
    created = await a.wait_for("transport_created", timeout=5)
    assert created["type"] == "producer"
    assert {"id", "iceParameters", "iceCandidates", "dtlsParameters"} <= set(created["options"])
    await a.close()


async def test_sigterm_drains_with_1001(cluster: Cluster) -> None:
    g1, p1 = start_gateway(cluster)
    _, p2 = start_gateway(cluster)
    a, b = await connect(p1), await connect(p2)
    aid = await a.join(URI)
    await b.join(URI)
    g1.proc.send_signal(signal.SIGTERM)
    assert (await a.wait_closed())[0] == 1001
    assert await b.wait_for("player_left") == {"playerId": aid}
    assert count(p2) == 1
    await asyncio.to_thread(g1.proc.wait, 10)
    assert g1.proc.returncode == 0
    await a.close()
    await b.close()


async def test_ipv6_loopback(cluster: Cluster) -> None:
    port = free_port()
    # the ops port binds ::1 too, so readiness is read from the spaces port's own /healthz
    gw = cluster.start("gateway", env={"SPACES_PORT": str(port), "BIND": "::1",
                                       "RENDEZVOUS_PORT": str(free_port_block(4) + 1)},
                       wait=False)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError):
            if http_get(f"http://[::1]:{port}/healthz", 0.5)[0] == 200:
                break
        assert gw.proc.poll() is None and time.monotonic() < deadline, gw.log()
        await asyncio.sleep(0.1)
    a = await WiredClient.connect(f"ws://[::1]:{port}/")
    assert 0 <= await a.join(URI) <= 255
    assert http_get(f"http://[::1]:{port}/player-count/{URI}") == (200, b"1")
    await a.close()


async def _churn(ports: list[int], rounds: int, width: int) -> None:
    """Players join, chat, move and leave or drop on random gateways, concurrently."""
    import random

    async def player(i: int) -> None:
        for r in range(rounds):
            c = await connect(ports[(i + r) % len(ports)])
            uri = f"churn-{(i + r) % 3}"
            await c.join(uri)
            await c.send("set_name", f"p{i}")
            await c.send("chat", "x")
            await c.send_raw(bytes(21))
            await asyncio.sleep(random.uniform(0, 0.05))
            if r % 2:
                await c.send("leave", uri)
            await c.close()

    await asyncio.wait_for(asyncio.gather(*(player(i) for i in range(width))), 60)


async def _assert_no_leftovers(redis_url: str, prefix: str, ports: list[int]) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 5
        while True:
            found = [str(k) for k in await r.keys(f"{prefix}space:*")]
            keys = sorted(k for k in found if not k.endswith(":shard"))
            counts = [count(p, f"churn-{i}") for p in ports for i in range(3)]
            if not keys and not any(counts):
                break
            assert time.monotonic() < deadline, (keys, counts)
            await asyncio.sleep(0.1)
        gw = [str(k) for k in await r.keys(f"{prefix}spaces:gw:*")]
        for key in gw:
            assert await r.hlen(key) == 0
    finally:
        await r.aclose()


async def test_churn_leaves_no_state_behind(cluster: Cluster, redis_url: str,
                                            prefix: str) -> None:
    _, p1 = start_gateway(cluster)
    _, p2 = start_gateway(cluster)
    await _churn([p1, p2], rounds=4, width=12)
    await _assert_no_leftovers(redis_url, prefix, [p1, p2])


@pytest.mark.slow
async def test_churn_soak(cluster: Cluster, redis_url: str, prefix: str) -> None:
    ports = [start_gateway(cluster)[1] for _ in range(3)]
    for _ in range(10):
        await _churn(ports, rounds=10, width=40)
    await _assert_no_leftovers(redis_url, prefix, ports)
