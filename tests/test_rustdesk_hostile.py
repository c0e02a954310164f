"""ID server under hostile input and operational edge cases (one gateway, real Redis)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from rustdesk_sim import Peer, TcpClient, WsClient, close_all, msg
from support import (
    Cluster,
    HubbubProcess,
    RedisServer,
    free_port,
    free_port_block,
    new_prefix,
    redis_server,
)

from gateway.rendezvous.records import Live
from gateway.rendezvous.store import Store
from hubbub.wire.rustdesk.messages import pb
from loadtest.cluster import rss_bytes
from registry import Registry
from registry.codec import pack


@dataclass
class One:
    cluster: Cluster
    gw: HubbubProcess
    port: int
    redis_url: str

    def rss_kb(self) -> int:
        return rss_bytes(self.gw.proc.pid) // 1024


@pytest.fixture(scope="module")
def one(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    cluster = Cluster(redis_srv.url, new_prefix(), tmp_path_factory.mktemp("rdh"))
    try:
        port = free_port_block(4) + 1
        gw = cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()),
                           "--trusted-proxies", "127.0.0.5")
        yield One(cluster, gw, port, redis_srv.url)
    finally:
        cluster.stop_all()


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


def _alive(one: One) -> None:
    """The server still registers a new peer and answers a NAT test."""
    p = Peer("127.0.0.1", one.port, "alive" + uuidlib.uuid4().hex[:8], src_ip="127.0.0.9")
    p.register()
    c = TcpClient("127.0.0.1", one.port - 1)
    c.send(msg(test_nat_request=pb.TestNatRequest()))
    r = c.recv()
    assert r is not None and r.test_nat_response.port == c.local[1]


def test_huge_and_truncated_frames(one: One) -> None:
    for port in (one.port, one.port - 1):
        c = TcpClient("127.0.0.1", port)
        c.send_raw(((1 << 30) - 1 << 2 | 3).to_bytes(4, "little"))  # "1 GB follows"
        assert c.closed()
        t = TcpClient("127.0.0.1", port)
        t.send_raw(b"\x91\x01" + b"x" * 10)  # 100 announced, 10 sent, then hang up
        t.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", one.port))
    s.sendall(b"\x14\xff\xff\xff\xff\xff")  # a complete frame that is not protobuf
    s.settimeout(3)
    data = b""
    with pytest.raises((ConnectionError, OSError)):
        while True:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
    s.close()
    _alive(one)


def test_garbage_datagrams_and_heartbeat_flood(one: One) -> None:
    before = one.rss_kb()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.4", 0))
    for i in range(3000):
        u.sendto(os.urandom(i % 200), ("127.0.0.1", one.port))
    hb = [pb.RendezvousMessage(register_peer=pb.RegisterPeer(id=f"flood{i}")).SerializeToString()
          for i in range(20_000)]
    for d in hb:
        u.sendto(d, ("127.0.0.1", one.port))
    u.close()
    time.sleep(0.5)
    _alive(one)
    assert one.rss_kb() - before < 40_000  # unknown IDs are not remembered


def test_registration_flood_from_one_ip(one: One) -> None:
    p = Peer("127.0.0.1", one.port, "x", src_ip="127.0.0.6")
    results = [p.register_pk(f"flooder{i:04d}") for i in range(40)]
    ok = results.count(pb.RegisterPkResponse.OK)
    assert ok == 31 and results[-1] == pb.RegisterPkResponse.TOO_FREQUENT
    _alive(one)


def test_connection_and_frame_floods(one: One) -> None:
    conns = []
    refused = 0
    for _ in range(300):
        try:
            conns.append(TcpClient("127.0.0.1", one.port, src_ip="127.0.0.7"))
        except OSError:
            refused += 1
    time.sleep(0.3)
    closed = sum(1 for c in conns[-40:] if c.closed(0.05))
    assert refused + closed >= 40  # beyond 256 per IP: dropped at once
    for c in conns:
        c.close()
    # Many frames at once on one connection: the connection is cut, the server is fine.
    c = TcpClient("127.0.0.1", one.port, src_ip="127.0.0.8")
    frame = b"\x04" + pb.RendezvousMessage(hc=pb.HealthCheck()).SerializeToString()[:1]
    c.send_raw(frame * 5000)
    assert c.closed(3.0)
    time.sleep(0.3)
    _alive(one)


def test_trusted_proxy_header_on_ws(one: One) -> None:
    def register_via(src_headers: dict[str, str], src_ip: str) -> None:
        w = WsClient("127.0.0.1", one.port + 2, headers=src_headers, src_ip=src_ip)
        peer = Peer("127.0.0.1", one.port, "proxied" + uuidlib.uuid4().hex[:6])
        w.send(msg(register_pk=pb.RegisterPk(id=peer.id, uuid=peer.uuid, pk=peer.pk)))
        r = w.recv()
        assert r is not None and r.register_pk_response.result == pb.RegisterPkResponse.OK
        w.close()
        out = one.cluster.hubbub("admin", "peer", peer.id).stdout
        ips.append(out.split("registered ip: ")[1].split()[0])

    ips: list[str] = []
    # The gateway trusts 127.0.0.5 only.
    register_via({"X-Real-IP": "203.0.113.9"}, "127.0.0.1")
    register_via({"X-Real-IP": "203.0.113.9"}, "127.0.0.5")
    register_via({"X-Forwarded-For": "10.9.9.9, 198.51.100.23"}, "127.0.0.5")
    register_via({"X-Real-IP": "not an ip"}, "127.0.0.5")
    assert ips == ["127.0.0.1", "203.0.113.9", "198.51.100.23", "127.0.0.5"]


def test_relay_host_from_shard_presence(one: One) -> None:
    r = redis.Redis.from_url(one.redis_url)
    prefix = one.cluster.prefix
    pid = f"shard:relayhost:1:{uuidlib.uuid4().hex[:6]}"
    info = {"id": pid, "role": "shard", "host": "relayhost", "pid": 1,
            "public_ip": "198.51.100.7", "started": time.time(), "state": "up",
            "ports": {"relay": 21117, "relay_ws": 21119},
            "load": {"relay_pairs": 0, "relay_bps": 0.0}}
    r.set(f"{prefix}proc:{pid}", pack(info), px=20_000)
    r.zadd(f"{prefix}procs", {pid: int((time.time() + 20) * 1000)})
    try:
        b = Peer("127.0.0.1", one.port, "relayuser" + uuidlib.uuid4().hex[:6],
                 src_ip="127.0.0.2")
        b.register()
        deadline = time.monotonic() + 6
        relay = ""
        while time.monotonic() < deadline and relay != "198.51.100.7":
            a = TcpClient("127.0.0.1", one.port)
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id)))
            ph = b.recv_udp(("punch_hole",))
            assert ph is not None
            relay = ph.punch_hole.relay_server
            a.close()
            time.sleep(0.3)
        assert relay == "198.51.100.7"
    finally:
        r.delete(f"{prefix}proc:{pid}")
        r.zrem(f"{prefix}procs", pid)
        r.close()


async def test_bindings_survive_redis_restart(tmp_path: Path) -> None:
    with redis_server(appendonly=True) as srv:
        reg = Registry(srv.url, new_prefix(), "test", "h", presence=False)
        store = Store(reg)
        live = Live("1.2.3.4", 5, time.time(), "gateway:h:1:x", 21116, 0)
        assert await store.register_pk("durable1", b"uuid-1", b"k" * 32, "1.2.3.4", live) == 1
        await reg.redis.aclose()
        srv.stop()
        srv.start()
        reg2 = Registry(srv.url, reg.prefix, "test", "h", presence=False)
        store2 = Store(reg2)
        rec = await store2.peer("durable1")
        assert rec is not None and rec.uuid == b"uuid-1" and rec.pk == b"k" * 32
        ttl = await reg2.redis.pttl(store2.live_key("durable1"))
        assert ttl == -2 or 0 < ttl <= 30_000  # liveness is volatile
        assert await store2.register_pk("durable1", b"other", b"k" * 32, "1.2.3.4", live) == 2
        await reg2.redis.aclose()


async def test_closed_stream_drops_liveness_only_while_its_gateway_owns_it() -> None:
    with redis_server() as srv:
        reg = Registry(srv.url, new_prefix(), "test", "h", presence=False)
        store = Store(reg)
        mine = Live("1.2.3.4", 5, time.time(), "mine", 21116, 1)
        theirs = Live("1.2.3.4", 6, time.time(), "theirs", 21116, 1)
        await reg.redis.set(store.live_key("moved"), theirs.pack())
        await reg.redis.set(store.live_key("stayed"), mine.pack())
        await reg.redis.set(store.live_key("garbage"), b"\xc1not msgpack")
        assert not await store.drop_live("moved", "mine")  # the peer moved on: keep its record
        assert await reg.redis.get(store.live_key("moved")) == theirs.pack()
        assert not await store.drop_live("garbage", "mine")
        assert not await store.drop_live("absent", "mine")
        assert await store.drop_live("stayed", "mine")
        assert await reg.redis.get(store.live_key("stayed")) is None
        await reg.redis.aclose()


def test_udp_nat_probes_are_rate_limited(one: One) -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.10", 0))
    u.settimeout(0.5)
    probe = pb.RendezvousMessage(test_nat_request=pb.TestNatRequest()).SerializeToString()
    for _ in range(100):
        u.sendto(probe, ("127.0.0.1", one.port))
    answers = 0
    with contextlib.suppress(TimeoutError):
        while True:
            u.recv(64)
            answers += 1
    u.close()
    assert 10 <= answers <= 40


def test_gateway_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """Bindings survive (AOF); liveness and punches work again once Redis is back."""
    with redis_server(appendonly=True) as srv:
        cluster = Cluster(srv.url, new_prefix(), tmp_path)
        try:
            port = free_port_block(4) + 1
            cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()))
            b = Peer("127.0.0.1", port, "restart" + uuidlib.uuid4().hex[:6], src_ip="127.0.0.2")
            b.register()
            srv.stop()
            srv.start()
            intruder = Peer("127.0.0.1", port, b.id, src_ip="127.0.0.2")
            deadline = time.monotonic() + 10
            result = None
            while time.monotonic() < deadline:
                intruder.send_udp(msg(register_pk=pb.RegisterPk(id=b.id, uuid=intruder.uuid,
                                                                pk=intruder.pk)))
                r = intruder.recv_udp(("register_pk_response",), timeout=1)
                if r is not None and r.register_pk_response.result != \
                        pb.RegisterPkResponse.SERVER_ERROR:
                    result = r.register_pk_response.result
                    break
                time.sleep(0.3)
            assert result == pb.RegisterPkResponse.UUID_MISMATCH
            assert b.heartbeat() is False
            a = TcpClient("127.0.0.1", port)
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id)))
            assert b.recv_udp(("punch_hole",)) is not None
        finally:
            cluster.stop_all()
