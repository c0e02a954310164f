"""End-to-end ID server tests: real gateways, real Redis, the client simulator.

Two gateways on different ports pin each client to a process, so every punch below crosses
processes: B registers with G1, A asks G2.
"""

from __future__ import annotations

import base64
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rustdesk_sim import Peer, TcpClient, WsClient, close_all, mangled, msg, verify_signed
from support import Cluster, HubbubProcess, RedisServer, free_port, free_port_block, new_prefix

from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import pb


OK = pb.RegisterPkResponse.OK


@dataclass
class Env:
    cluster: Cluster
    g1: HubbubProcess
    g2: HubbubProcess
    p1: int
    p2: int
    pub: str
    workdir: Path

    def admin(self, *words: str) -> str:
        res = self.cluster.hubbub("admin", *words)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


def _gateway(cluster: Cluster, port: int, *extra: str) -> HubbubProcess:
    return cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()), *extra)


@pytest.fixture(scope="module")
def env(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("rd")
    cluster = Cluster(redis_srv.url, new_prefix(), workdir)
    try:
        p1 = free_port_block(4) + 1
        p2 = free_port_block(4) + 1
        g1 = _gateway(cluster, p1, "-k", "_")
        g2 = _gateway(cluster, p2, "-k", "_")
        pub = (workdir / "data" / "id_ed25519.pub").read_text()
        yield Env(cluster, g1, g2, p1, p2, pub, workdir)
    finally:
        cluster.stop_all()


def _id() -> str:
    return str(1_000_000_000 + uuidlib.uuid4().int % 899_999_999)


def _b(env: Env, src_ip: str = "127.0.0.2") -> Peer:
    peer = Peer("127.0.0.1", env.p1, _id(), src_ip=src_ip)
    peer.register()
    return peer


def _punch(env: Env, target: str, **kw: object) -> TcpClient:
    a = TcpClient("127.0.0.1", env.p2)
    fields: dict[str, object] = {"id": target, "licence_key": env.pub, "version": "1.4.9"}
    fields.update(kw)
    a.send(msg(punch_hole_request=pb.PunchHoleRequest(**fields)))  # type: ignore[arg-type]
    return a


def test_registration_rules(env: Env) -> None:
    b = _b(env)
    assert b.heartbeat() is False
    # Another device may not take the ID; an invalid ID is refused without renumbering.
    other = Peer("127.0.0.1", env.p1, b.id, src_ip="127.0.0.2")
    assert other.register_pk() == pb.RegisterPkResponse.UUID_MISMATCH
    assert other.register_pk("bad id!") == pb.RegisterPkResponse.INVALID_ID_FORMAT
    # The owner re-registering with a new key from the same IP is fine.
    b.sk = type(b.sk).generate()
    assert b.register_pk() == OK
    # A heartbeat for a known ID reaching the other gateway is trusted from Redis.
    moved = Peer("127.0.0.1", env.p2, b.id, uuid=b.uuid, sk=b.sk, src_ip="127.0.0.2")
    assert moved.heartbeat() is False
    # Empty uuid/pk: silently dropped.
    other.send_udp(msg(register_pk=pb.RegisterPk(id=b.id)))
    assert other.recv_udp(("register_pk_response",), timeout=0.5) is None
    for p in (b, other, moved):
        p.close()


def test_online_query_everywhere(env: Env) -> None:
    b = _b(env)
    ids = ["nobody1", "nobody2", b.id] + [f"x{i}" for i in range(7)]
    want = bytes([0x20, 0x00])
    req = msg(online_request=pb.OnlineRequest(id="me", peers=ids))
    time.sleep(1.3)  # liveness reaches Redis within one flush
    for port in (env.p2 - 1, env.p2):
        c = TcpClient("127.0.0.1", port)
        c.send(req)
        r = c.recv()
        assert r is not None and r.online_response.states == want
        c.close()
    w = WsClient("127.0.0.1", env.p2 + 2)
    w.send(req)
    r = w.recv()
    assert r is not None and r.online_response.states == want
    w.close()
    b.close()


def test_nat_test_both_ports(env: Env) -> None:
    for port in (env.p1, env.p1 - 1):
        c = TcpClient("127.0.0.1", port)
        c.send(msg(test_nat_request=pb.TestNatRequest(serial=0)))
        r = c.recv(skip_kx=False)  # a client that speaks first never sees a KeyExchange
        assert r is not None and r.test_nat_response.port == c.local[1]
        assert c.closed()
        c.close()
    # UDP variant (UDP punching): answered to the datagram's source only.
    p = Peer("127.0.0.1", env.p1, "natprobe")
    p.send_udp(msg(test_nat_request=pb.TestNatRequest()))
    r = p.recv_udp(("test_nat_response",))
    assert r is not None and r.test_nat_response.port == p.udp_addr[1]
    p.close()


def test_punch_across_gateways_with_signed_pk(env: Env) -> None:
    b = _b(env)
    a = _punch(env, b.id, nat_type=pb.ASYMMETRIC, udp_port=4242, socket_addr_v6=b"\x01" * 18)
    ph = b.recv_udp(("punch_hole",))
    assert ph is not None, "B got no PunchHole"
    # The push left from the very port B registered to (G1), though A talks to G2.
    assert b.last_src == ("127.0.0.1", env.p1)
    assert mangled(ph.punch_hole.socket_addr) == a.local
    assert ph.punch_hole.nat_type == pb.ASYMMETRIC
    assert ph.punch_hole.udp_port == 4242 and ph.punch_hole.socket_addr_v6 == b"\x01" * 18
    # B answers on a fresh connection to its own server (G1); A's connection is on G2.
    t = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
    t.send(msg(punch_hole_sent=pb.PunchHoleSent(
        socket_addr=ph.punch_hole.socket_addr, id=b.id, relay_server="relay.example",
        nat_type=pb.SYMMETRIC, version="1.4.9", socket_addr_v6=b"\x02" * 18)))
    r = a.recv()
    assert r is not None and r.WhichOneof("union") == "punch_hole_response"
    resp = r.punch_hole_response
    assert mangled(resp.socket_addr) == t.local
    assert resp.relay_server == "relay.example" and resp.nat_type == pb.SYMMETRIC
    assert resp.socket_addr_v6 == b"\x02" * 18
    assert verify_signed(env.pub, resp.pk) == (b.id, b.pk)
    for c in (a, t):
        c.close()
    b.close()


def test_failures_key_unknown_offline(env: Env) -> None:
    b = _b(env)
    a = _punch(env, b.id, licence_key="OeVuKk5nlHiXp+APNn0Y3pC1Iwpwn44JGqrQCsWqmBw=")
    r = a.recv()
    assert r is not None
    assert r.punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    assert not r.punch_hole_response.socket_addr
    a = _punch(env, "no-such-peer-1")
    r = a.recv()
    assert r is not None and r.punch_hole_response.failure == pb.PunchHoleResponse.ID_NOT_EXIST
    # Known but never heard: imported peers are offline until they heartbeat.
    db = env.workdir / "offline.sqlite3"
    _hbbs_db(db, [("offline-peer1", b"u-off", b"k" * 32)])
    res = env.cluster.hubbub("import-hbbs", str(db))
    assert res.returncode == 0, res.stderr
    a = _punch(env, "offline-peer1")
    r = a.recv()
    assert r is not None and r.punch_hole_response.failure == pb.PunchHoleResponse.OFFLINE
    b.close()


def test_lan_path(env: Env) -> None:
    # Same public IP for A and B: FetchLocalAddr, then LocalAddr -> is_local response.
    b = _b(env, src_ip="127.0.0.1")
    a = _punch(env, b.id)
    fl = b.recv_udp(("fetch_local_addr",))
    assert fl is not None and mangled(fl.fetch_local_addr.socket_addr) == a.local
    t = TcpClient("127.0.0.1", env.p1)
    lan = ("192.168.1.20", 21118)
    from hubbub.wire.rustdesk import addr

    t.send(msg(local_addr=pb.LocalAddr(socket_addr=fl.fetch_local_addr.socket_addr,
                                       local_addr=addr.encode(*lan, 77), id=b.id,
                                       version="1.4.9")))
    r = a.recv()
    assert r is not None and r.punch_hole_response.is_local
    assert mangled(r.punch_hole_response.socket_addr) == lan
    assert verify_signed(env.pub, r.punch_hole_response.pk) == (b.id, b.pk)
    b.close()


def test_relay_b_initiated_with_always_use_relay(env: Env) -> None:
    assert env.admin("aur", "Y") == "Y"
    assert env.admin("rs", "relay1.example:21117") == "relay1.example:21117"
    try:
        time.sleep(0.3)
        b = _b(env)
        a = _punch(env, b.id, nat_type=pb.ASYMMETRIC)
        ph = b.recv_udp(("punch_hole",))
        assert ph is not None and ph.punch_hole.nat_type == pb.SYMMETRIC
        assert ph.punch_hole.relay_server == "relay1.example:21117"
        t = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
        uuid = str(uuidlib.uuid4())
        t.send(msg(relay_response=pb.RelayResponse(
            socket_addr=ph.punch_hole.socket_addr, uuid=uuid,
            relay_server=ph.punch_hole.relay_server, id=b.id, version="1.4.9")))
        r = a.recv()
        assert r is not None and r.WhichOneof("union") == "relay_response"
        rr = r.relay_response
        assert rr.uuid == uuid and not rr.socket_addr and rr.WhichOneof("union") == "pk"
        assert verify_signed(env.pub, rr.pk) == (b.id, b.pk)
        b.close()
    finally:
        env.admin("aur", "-")
        env.admin("rs", "-")


def test_relay_a_initiated(env: Env) -> None:
    b = _b(env)
    a = TcpClient("127.0.0.1", env.p2)
    uuid = str(uuidlib.uuid4())
    # A newer client's unknown field (99) must survive the forwarding to B.
    inner = pb.RequestRelay(id=b.id, uuid=uuid, relay_server="r.example",
                            secure=True).SerializeToString() + bytes.fromhex("98062a")
    a.send_raw(encode_frame(b"\x92\x01" + bytes((len(inner),)) + inner))
    rq = b.recv_udp(("request_relay",))
    assert rq is not None and rq.request_relay.uuid == uuid
    assert bytes.fromhex("98062a") in rq.request_relay.SerializeToString()
    assert mangled(rq.request_relay.socket_addr) == a.local
    assert b.last_src == ("127.0.0.1", env.p1)
    t = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
    t.send(msg(relay_response=pb.RelayResponse(socket_addr=rq.request_relay.socket_addr,
                                               version="1.4.9")))
    r = a.recv()
    assert r is not None and r.WhichOneof("union") == "relay_response"
    # Unknown target: refused with a reason instead of a silent 18 s timeout.
    a2 = TcpClient("127.0.0.1", env.p2)
    a2.send(msg(request_relay=pb.RequestRelay(id="nobody-here", uuid=uuid)))
    r = a2.recv()
    assert r is not None and r.relay_response.refuse_reason
    b.close()


def test_secure_tcp_then_encrypted_punch(env: Env) -> None:
    b = _b(env)
    a = TcpClient("127.0.0.1", env.p2)
    a.secure(base64.b64decode(env.pub))
    a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, licence_key=env.pub,
                                                      token="logged-in", version="1.4.9")))
    ph = b.recv_udp(("punch_hole",))
    assert ph is not None
    t = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
    t.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.punch_hole.socket_addr,
                                                id=b.id, version="1.4.9")))
    r = a.recv()  # decrypted by the simulator with the session key
    assert r is not None and verify_signed(env.pub, r.punch_hole_response.pk) == (b.id, b.pk)
    b.close()


def test_tcp_and_ws_registration_mode(env: Env) -> None:
    peer = Peer("127.0.0.1", env.p1, _id())
    s = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
    s.secure(base64.b64decode(env.pub))
    s.send(msg(register_pk=pb.RegisterPk(id=peer.id, uuid=peer.uuid, pk=peer.pk)))
    r = s.recv()
    assert r is not None and r.register_pk_response.result == OK
    assert r.register_pk_response.keep_alive > 0
    a = _punch(env, peer.id)
    ph = s.recv()
    assert ph is not None and ph.WhichOneof("union") == "punch_hole"
    assert mangled(ph.punch_hole.socket_addr) == a.local
    s.close()
    wpeer = Peer("127.0.0.1", env.p1, _id())
    w = WsClient("127.0.0.1", env.p1 + 2)
    w.send(msg(register_pk=pb.RegisterPk(id=wpeer.id, uuid=wpeer.uuid, pk=wpeer.pk)))
    r = w.recv()
    assert r is not None and r.register_pk_response.result == OK
    a = TcpClient("127.0.0.1", env.p2)
    uuid = str(uuidlib.uuid4())
    a.send(msg(request_relay=pb.RequestRelay(id=wpeer.id, uuid=uuid)))
    rq = w.recv()
    assert rq is not None and rq.request_relay.uuid == uuid
    w.close()
    peer.close()
    wpeer.close()


def test_change_id(env: Env) -> None:
    b = _b(env)
    new = "Alice-" + uuidlib.uuid4().hex[:8]

    def change(old: str, new_id: str, uuid: bytes) -> int:
        c = TcpClient("127.0.0.1", env.p2)
        c.send(msg(register_pk=pb.RegisterPk(old_id=old, id=new_id, uuid=uuid)))
        r = c.recv()
        c.close()
        assert r is not None
        return int(r.register_pk_response.result)

    assert change(b.id, "9bad", b.uuid) == pb.RegisterPkResponse.INVALID_ID_FORMAT
    assert change(b.id, new, b"someone-else") == pb.RegisterPkResponse.UUID_MISMATCH
    assert change(b.id, new, b.uuid) == OK
    # The device re-registers under its new ID with the same key; nobody else can take it.
    b.id = new
    assert b.register_pk() == OK
    thief = _b(env)
    assert change(thief.id, new, thief.uuid) == pb.RegisterPkResponse.ID_EXISTS
    assert new in env.admin("idc")
    b.close()
    thief.close()


def _hbbs_db(path: Path, rows: list[tuple[str, bytes, bytes]]) -> None:
    db = sqlite3.connect(path)
    db.executescript("""
        create table if not exists peer (
            guid blob primary key not null, id varchar(100) not null, uuid blob not null,
            pk blob not null, created_at datetime not null default(current_timestamp),
            user blob, status tinyint, note varchar(300), info text not null
        ) without rowid;
        create unique index if not exists index_peer_id on peer (id);
    """)
    for peer_id, uuid, pk in rows:
        db.execute("insert into peer (guid, id, uuid, pk, info) values (?, ?, ?, ?, ?)",
                   (uuidlib.uuid4().bytes, peer_id, uuid, pk, '{"ip":"::ffff:127.0.0.2"}'))
    db.commit()
    db.close()


def test_import_hbbs(env: Env) -> None:
    owner = Peer("127.0.0.1", env.p1, "imported01", src_ip="127.0.0.2")
    db = env.workdir / "db_v2.sqlite3"
    _hbbs_db(db, [("imported01", owner.uuid, owner.pk), ("bad id", b"u", b"k")])
    res = env.cluster.hubbub("import-hbbs", str(db))
    assert res.returncode == 0, res.stderr
    assert "imported 1" in res.stdout and "skipped 1" in res.stdout
    intruder = Peer("127.0.0.1", env.p1, "imported01", src_ip="127.0.0.2")
    assert intruder.register_pk() == pb.RegisterPkResponse.UUID_MISMATCH
    assert owner.heartbeat() is False  # known key and IP: no RegisterPk needed
    assert "registered ip: 127.0.0.2" in env.admin("peer", "imported01")
    bad = env.cluster.hubbub("import-hbbs", str(env.workdir / "missing.sqlite3"))
    assert bad.returncode == 2
    owner.close()
    intruder.close()


def test_admin_punch_log_and_ops_route(env: Env) -> None:
    b = _b(env)
    a = _punch(env, b.id)
    assert b.recv_udp(("punch_hole",)) is not None
    assert f"-> {b.id}@127.0.0.2" in env.admin("pr", "50")
    assert "tracked IPs" in env.admin("ib")
    assert "peers heard" in env.admin("stats")
    import urllib.request

    token = (env.workdir / "data" / "admin_token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{env.g1.ops_port}/rendezvous/admin",
                                 data=b'["aur"]', method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=3) as resp:
        assert resp.read().strip() in (b"Y", b"N")
    a.close()
    b.close()


def test_shared_ports_via_reuseport(env: Env) -> None:
    """Two more gateways bound to the same ports: any of them may get any packet."""
    port = free_port_block(4) + 1
    extra = [_gateway(env.cluster, port, "-k", "_") for _ in range(2)]
    try:
        for _ in range(4):
            b = Peer("127.0.0.1", port, _id(), src_ip="127.0.0.2")
            b.register()
            a = TcpClient("127.0.0.1", port)
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, licence_key=env.pub,
                                                              version="1.4.9")))
            ph = b.recv_udp(("punch_hole",))
            assert ph is not None and b.last_src == ("127.0.0.1", port)
            t = TcpClient("127.0.0.1", port, src_ip="127.0.0.2")
            t.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.punch_hole.socket_addr,
                                                        id=b.id, version="1.4.9")))
            r = a.recv()
            assert r is not None and verify_signed(env.pub, r.punch_hole_response.pk)
            b.close()
    finally:
        for p in extra:
            p.kill()


def test_keygen_cli(env: Env, tmp_path: Path) -> None:
    res = env.cluster.hubbub("keygen", "--data-dir", str(tmp_path))
    assert res.returncode == 0
    pub = (tmp_path / "id_ed25519.pub").read_text()
    assert f"Public Key:  {pub}" in res.stdout and "/" not in pub
    again = env.cluster.hubbub("keygen", "--data-dir", str(tmp_path))
    assert again.stdout == res.stdout


def test_mask_local_ip_and_config_update(env: Env) -> None:
    """hbbs's LAN logic (--mask, LOCAL_IP) and the legacy ConfigUpdate by serial."""
    port = free_port_block(4) + 1
    gw = _gateway(env.cluster, port, "--mask", "127.0.0.2/32", "--local-ip", "10.9.8.7",
                  "-s", "5", "-R", "rs1.example,rs2.example")
    try:
        b = Peer("127.0.0.1", port, _id(), src_ip="127.0.0.2")  # inside the mask
        b.register()
        cu = b.recv_udp(("configure_update",), timeout=1)
        assert cu is not None and cu.configure_update.serial == 5
        assert list(cu.configure_update.rendezvous_servers) == ["rs1.example", "rs2.example"]
        a = TcpClient("127.0.0.1", port)  # outside the mask: exactly one side is LAN
        a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, nat_type=pb.ASYMMETRIC)))
        ph = b.recv_udp(("punch_hole",))
        assert ph is not None and ph.punch_hole.nat_type == pb.SYMMETRIC
        assert ph.punch_hole.relay_server == "10.9.8.7"
        c = TcpClient("127.0.0.1", port)
        c.send(msg(test_nat_request=pb.TestNatRequest(serial=1)))
        r = c.recv()
        assert r is not None and r.test_nat_response.cu.serial == 5
    finally:
        gw.kill()


@pytest.mark.slow
def test_stream_registration_stays_online(env: Env) -> None:
    """A TCP-registered device answering server heartbeats stays online past 30 s."""
    peer = Peer("127.0.0.1", env.p1, _id())
    s = TcpClient("127.0.0.1", env.p1, src_ip="127.0.0.2")
    s.send(msg(register_pk=pb.RegisterPk(id=peer.id, uuid=peer.uuid, pk=peer.pk)))
    r = s.recv()
    assert r is not None and r.register_pk_response.result == OK
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        s.recv(timeout=1.0)  # echoes the server's empty frames
    q = TcpClient("127.0.0.1", env.p2 - 1)
    q.send(msg(online_request=pb.OnlineRequest(id="me", peers=[peer.id])))
    r = q.recv()
    assert r is not None and r.online_response.states == b"\x80"
