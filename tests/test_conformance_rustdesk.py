"""Conformance of the ID server with the RustDesk protocol, seen from an independent client.

Every test talks to a real gateway process through raw sockets (``conformance_rustdesk``) and
checks bytes and fields the way the real desktop client reads them.
"""

from __future__ import annotations

import base64
import socket
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conformance_rustdesk import (
    RUSTDESK_COM_KEY,
    Tcp,
    UdpPeer,
    Ws,
    close_all,
    demangle,
    frame,
    kind,
    mangle,
    msg,
    new_id,
    punch_request,
    verify_idpk,
)
from nacl.signing import SigningKey
from support import (
    Cluster,
    HubbubProcess,
    RedisServer,
    free_port,
    free_port_block,
    new_prefix,
    shard_env,
)

from hubbub.wire.rustdesk import rendezvous_pb2 as pb


H = "127.0.0.1"
RELAY = "relay.example.net:21117"
TIMEOUT_RELAY = 5.0
OK = pb.RegisterPkResponse.OK


@dataclass
class Gw:
    proc: HubbubProcess
    port: int
    pub: str
    data: Path

    @property
    def udp(self) -> tuple[str, int]:
        return (H, self.port)


@dataclass
class Env:
    cluster: Cluster
    gw: Gw
    workdir: Path

    def start(self, *args: str, env: dict[str, str | None] | None = None, v6: bool = False) -> Gw:
        port = free_port_block(4) + 1
        proc = self.cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()),
                                  *args, env=env, wait=not v6)
        if v6:
            proc.ops_host = "[::1]"
            proc.wait_healthy()
        data = self.workdir / "data"
        return Gw(proc, port, (data / "id_ed25519.pub").read_text(), data)


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(scope="module")
def env(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("conf")
    cluster = Cluster(redis_srv.url, new_prefix(), workdir)
    try:
        e = Env(cluster, None, workdir)  # type: ignore[arg-type]
        e.gw = e.start("-k", "_", "-r", RELAY)
        yield e
    finally:
        cluster.stop_all()


def _b(gw: Gw, src_ip: str | None = None) -> UdpPeer:
    b = UdpPeer(gw.udp, src_ip=src_ip)
    b.register()
    return b


# ------------------------------------------------------------------ schema
def test_oneof_tags_and_vectors() -> None:
    """Tag bytes of every oneof member and the published encodings (spec 3.1, 3.4)."""
    tags = {6: "32", 7: "3a", 8: "42", 9: "4a", 10: "52", 11: "5a", 12: "62", 13: "6a",
            14: "72", 15: "7a", 16: "8201", 17: "8a01", 18: "9201", 19: "9a01", 20: "a201",
            21: "aa01", 22: "b201", 23: "ba01", 24: "c201", 25: "ca01", 26: "d201",
            27: "da01", 28: "e201"}
    fields = pb.RendezvousMessage.DESCRIPTOR.oneofs_by_name["union"].fields
    assert {f.number for f in fields} == set(tags)
    for f in fields:
        m = pb.RendezvousMessage()
        getattr(m, f.name).SetInParent()
        assert m.SerializeToString().hex() == tags[f.number] + "00", f.name
    assert msg(register_peer=pb.RegisterPeer(id="123456789")).hex() == \
        "320b0a09313233343536373839"
    assert msg(register_peer_response=pb.RegisterPeerResponse(request_pk=True)).hex() == \
        "3a021001"
    assert msg(register_pk_response=pb.RegisterPkResponse(keep_alive=30)).hex() == "820102101e"
    assert msg(test_nat_response=pb.TestNatResponse(port=54321)).hex() == "aa010408b1a803"
    assert msg(online_response=pb.OnlineResponse(states=b"\x80")).hex() == "c201030a0180"


def test_field_numbers_match_spec() -> None:
    want = {
        "RegisterPeer": {"id": 1, "serial": 2},
        "RegisterPeerResponse": {"request_pk": 2},
        "PunchHoleRequest": {"id": 1, "nat_type": 2, "licence_key": 3, "conn_type": 4,
                             "token": 5, "version": 6, "udp_port": 7, "force_relay": 8,
                             "upnp_port": 9, "socket_addr_v6": 10, "switch_code": 11},
        "PunchHole": {"socket_addr": 1, "relay_server": 2, "nat_type": 3, "udp_port": 4,
                      "force_relay": 5, "upnp_port": 6, "socket_addr_v6": 7,
                      "control_permissions": 8, "controlled_context": 9},
        "PunchHoleSent": {"socket_addr": 1, "id": 2, "relay_server": 3, "nat_type": 4,
                          "version": 5, "upnp_port": 6, "socket_addr_v6": 7},
        "PunchHoleResponse": {"socket_addr": 1, "pk": 2, "failure": 3, "relay_server": 4,
                              "nat_type": 5, "is_local": 6, "other_failure": 7,
                              "feedback": 8, "is_udp": 9, "upnp_port": 10,
                              "socket_addr_v6": 11},
        "FetchLocalAddr": {"socket_addr": 1, "relay_server": 2, "socket_addr_v6": 3,
                           "control_permissions": 4, "controlled_context": 5},
        "LocalAddr": {"socket_addr": 1, "local_addr": 2, "relay_server": 3, "id": 4,
                      "version": 5, "socket_addr_v6": 6},
        "ConfigUpdate": {"serial": 1, "rendezvous_servers": 2},
        "RegisterPk": {"id": 1, "uuid": 2, "pk": 3, "old_id": 4, "no_register_device": 5},
        "RegisterPkResponse": {"result": 1, "keep_alive": 2},
        "RequestRelay": {"id": 1, "uuid": 2, "socket_addr": 3, "relay_server": 4, "secure": 5,
                         "licence_key": 6, "conn_type": 7, "token": 8,
                         "control_permissions": 9, "controlled_context": 10,
                         "switch_code": 11},
        "RelayResponse": {"socket_addr": 1, "uuid": 2, "relay_server": 3, "id": 4, "pk": 5,
                          "refuse_reason": 6, "version": 7, "feedback": 9,
                          "socket_addr_v6": 10, "upnp_port": 11},
        "TestNatRequest": {"serial": 1}, "TestNatResponse": {"port": 1, "cu": 2},
        "OnlineRequest": {"id": 1, "peers": 2}, "OnlineResponse": {"states": 1},
        "KeyExchange": {"keys": 1}, "HealthCheck": {"token": 1}, "IdPk": {"id": 1, "pk": 2},
    }
    for name, fields in want.items():
        desc = getattr(pb, name).DESCRIPTOR
        assert {f.name: f.number for f in desc.fields} == fields, name
    assert dict(pb.RegisterPkResponse.Result.items()) == {
        "OK": 0, "UUID_MISMATCH": 2, "ID_EXISTS": 3, "TOO_FREQUENT": 4,
        "INVALID_ID_FORMAT": 5, "NOT_SUPPORT": 6, "SERVER_ERROR": 7, "NOT_DEPLOYED": 8}
    assert dict(pb.PunchHoleResponse.Failure.items()) == {
        "ID_NOT_EXIST": 0, "OFFLINE": 2, "LICENSE_MISMATCH": 3, "LICENSE_OVERUSE": 4}
    assert dict(pb.NatType.items()) == {"UNKNOWN_NAT": 0, "ASYMMETRIC": 1, "SYMMETRIC": 2}
    assert dict(pb.ConnType.items()) == {"DEFAULT_CONN": 0, "FILE_TRANSFER": 1,
                                         "PORT_FORWARD": 2, "RDP": 3, "VIEW_CAMERA": 4,
                                         "TERMINAL": 5}


def test_own_codecs_match_vectors() -> None:
    assert frame(b"").hex() == "00" and frame(bytes(100))[:2].hex() == "9101"
    assert frame(bytes(20000))[:3].hex() == "823801"
    assert mangle("1.2.3.4", 5, 0).hex() == "05000000000002040608"
    assert mangle("192.168.16.32", 21116, 1_700_000_000_123_456).hex() == \
        "bc748044403000966170"
    assert demangle(bytes.fromhex("bc748044403000966170")) == ("192.168.16.32", 21116)


# ------------------------------------------------------------------ UDP registration
def test_udp_registration_bytes_and_source_port(env: Env) -> None:
    gw = env.gw
    b = UdpPeer(gw.udp)
    b.register_peer()
    data, addr = b.recv_raw()
    assert addr[1] == gw.port and data.hex() == "3a021001"  # request_pk for an unknown ID
    b.register_pk()
    data, addr = b.recv_raw()
    assert addr[1] == gw.port and data.hex() == "820100"  # OK: an empty member still emitted
    b.register_peer()
    data, addr = b.recv_raw()
    assert data.hex() == "3a00"
    # Same uuid and pk again (a re-sent RegisterPk) is still OK.
    b.register_pk()
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK


def test_udp_uuid_rules(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    other = UdpPeer(gw.udp, peer_id=b.id)
    other.register_pk()
    data, _ = other.recv_raw()
    assert data.hex() == "8201020802"  # UUID_MISMATCH: another machine owns the ID
    # Same machine, new key, same IP: the key is replaced.
    b2 = UdpPeer(gw.udp, peer_id=b.id, src_ip=b.src_ip)
    b2.uuid = b.uuid
    b2.register_pk()
    assert b2.recv_kind("register_pk_response").register_pk_response.result == OK
    # Same machine, another key from another IP: refused.
    b3 = UdpPeer(gw.udp, peer_id=b.id, src_ip="127.0.0.3")
    b3.uuid = b.uuid
    b3.register_pk()
    assert (b3.recv_kind("register_pk_response").register_pk_response.result
            == pb.RegisterPkResponse.UUID_MISMATCH)


def test_udp_drops_and_short_ids(env: Env) -> None:
    gw = env.gw
    b = UdpPeer(gw.udp)
    b.register_pk(uuid=b"")  # no uuid: silently dropped
    b.register_pk(pk=b"")  # no pk: silently dropped
    b.send(msg(register_peer=pb.RegisterPeer(id="")))  # empty id: ignored
    b.send(b"\xff\xff\xff")  # garbage: ignored
    with pytest.raises(TimeoutError):
        b.recv(0.5)
    # IDs shorter than 6 characters are not answered UUID_MISMATCH (that renumbers devices).
    short = UdpPeer(gw.udp, peer_id=str(10_000 + uuidlib.uuid4().int % 89_999))
    short.register_pk()
    assert short.recv_kind("register_pk_response").register_pk_response.result == OK


def test_udp_resend_after_lost_answer(env: Env) -> None:
    """A client resends its heartbeat after 3 s without an answer; each gets its answer."""
    b = _b(env.gw)
    for _ in range(3):
        b.register_peer()
        assert not b.recv_kind("register_peer_response").register_peer_response.request_pk


# ------------------------------------------------------------------ NAT test and online
def test_nat_test_same_local_port_both_ports(env: Env) -> None:
    gw = env.gw
    c1 = Tcp(H, gw.port, src=(H, 0), reuse=True)
    local = c1.local
    c1.send(msg(test_nat_request=pb.TestNatRequest(serial=0)))
    r1 = c1.recv()
    assert kind(r1) == "test_nat_response" and r1.test_nat_response.port == local[1]
    assert not r1.test_nat_response.HasField("cu")
    assert c1.closed_by_server(2.0)
    c2 = Tcp(H, gw.port - 1, src=local, reuse=True)
    c2.send(msg(test_nat_request=pb.TestNatRequest(serial=0)))
    r2 = c2.recv(skip_kx=False)
    assert kind(r2) == "test_nat_response" and r2.test_nat_response.port == local[1]
    assert c2.closed_by_server(2.0)


def test_online_query_bitmap(env: Env) -> None:
    gw = env.gw
    on1, on2 = _b(gw), _b(gw)
    ids = [on1.id, new_id(), "", new_id(), new_id(), new_id(), new_id(), new_id(), on2.id,
           new_id()]
    c = Tcp(H, gw.port - 1)
    c.send(msg(online_request=pb.OnlineRequest(id=new_id(), peers=ids)))
    r = c.recv(skip_kx=False)
    assert kind(r) == "online_response"
    assert r.online_response.states == bytes([0x80, 0x80])  # MSB first, ceil(10/8) bytes
    assert c.closed_by_server(2.0)
    # Extensions: the same query on the main port and on the WebSocket port.
    t = Tcp(H, gw.port)
    t.send(msg(online_request=pb.OnlineRequest(id="x", peers=ids[:9])))
    assert t.recv().online_response.states == bytes([0x80, 0x80])
    w = Ws(H, gw.port + 2)
    w.send(msg(online_request=pb.OnlineRequest(id="x", peers=[on2.id])))
    assert w.recv().online_response.states == b"\x80"
    # An empty list gives an empty bitmap; a missing list is not an error.
    c = Tcp(H, gw.port - 1)
    c.send(msg(online_request=pb.OnlineRequest(id="x")))
    assert c.recv(skip_kx=False).online_response.states == b""


def test_nat_port_sends_no_key_exchange_and_no_admin(env: Env) -> None:
    gw = env.gw
    c = Tcp(H, gw.port - 1)
    c.send_raw(b"h\n")  # an hbbs console command from loopback: not an admin session here
    c.sock.settimeout(1.0)
    try:
        data = c.sock.recv(100)
    except TimeoutError:
        data = b""
    assert b"relay" not in data.lower() and b"help" not in data.lower()


# ------------------------------------------------------------------ punch over TCP
def _fields(m: object) -> set[str]:
    """Names of the fields present on the wire."""
    return {f.name for f, _ in m.ListFields()}  # type: ignore[attr-defined]


def _check_idpk(gw: Gw, b: UdpPeer, signed: bytes) -> None:
    assert verify_idpk(gw.pub, signed) == (b.id, b.pk)


def test_punch_hole_flow(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub, nat_type=pb.ASYMMETRIC, conn_type=pb.FILE_TRANSFER))
    ph = b.recv_kind("punch_hole").punch_hole
    assert demangle(ph.socket_addr) == a.local
    assert ph.nat_type == pb.ASYMMETRIC and ph.relay_server == RELAY
    assert _fields(ph) == {"socket_addr", "relay_server", "nat_type"}
    # B answers on a fresh TCP connection, which the server closes after reading.
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(
        socket_addr=ph.socket_addr, id=b.id, relay_server=ph.relay_server,
        nat_type=pb.SYMMETRIC, version="1.4.9")))
    resp = a.recv()
    assert kind(resp) == "punch_hole_response"
    r = resp.punch_hole_response
    assert demangle(r.socket_addr) == bt.local  # B's public endpoint as the server saw it
    _check_idpk(gw, b, r.pk)
    assert r.relay_server == RELAY and r.WhichOneof("union") == "nat_type"
    assert r.nat_type == pb.SYMMETRIC and not r.is_udp
    assert _fields(r) == {"socket_addr", "pk", "relay_server", "nat_type"}
    assert bt.closed_by_server(2.0)


def test_punch_retries_on_one_connection(env: Env) -> None:
    """The client sends its request up to 3 times on one connection (3, 6, 9 s apart)."""
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub))
    first = b.recv_kind("punch_hole").punch_hole
    with pytest.raises(TimeoutError):
        a.recv(0.5)  # B did not answer yet: nothing for A
    a.send(punch_request(b.id, gw.pub))
    second = b.recv_kind("punch_hole").punch_hole
    assert demangle(first.socket_addr) == demangle(second.socket_addr) == a.local
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=second.socket_addr, id=b.id,
                                                 version="1.4.9")))
    assert kind(a.recv()) == "punch_hole_response"


def test_punch_failures(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, RUSTDESK_COM_KEY))  # Key left empty in the client
    assert a.recv_payload().hex() == "5a021803"  # LICENSE_MISMATCH
    a.send(punch_request(b.id, ""))
    assert a.recv_payload().hex() == "5a021803"
    with pytest.raises(TimeoutError):
        b.recv(0.3)
    # The connection stays open for further requests.
    a.send(punch_request(new_id(), gw.pub))
    assert a.recv_payload().hex() == "5a00"  # ID_NOT_EXIST (all defaults)


def test_punch_without_version_is_unsigned(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub))
    ph = b.recv_kind("punch_hole").punch_hole
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id)))
    r = a.recv().punch_hole_response
    assert r.pk == b"" and r.WhichOneof("union") == "nat_type"  # set even when UNKNOWN_NAT


def test_lan_path(env: Env) -> None:
    gw = env.gw
    b = _b(gw, src_ip=H)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub))
    fla = b.recv_kind("fetch_local_addr").fetch_local_addr
    assert demangle(fla.socket_addr) == a.local and fla.relay_server == RELAY
    assert _fields(fla) == {"socket_addr", "relay_server"}
    bt = Tcp(H, gw.port)
    lan = mangle("192.168.1.7", 40000)
    # The client re-encodes A's address (a fresh time salt), it does not copy the bytes.
    again = mangle(*demangle(fla.socket_addr), tm=12345)
    assert again != fla.socket_addr
    bt.send(msg(local_addr=pb.LocalAddr(socket_addr=again, local_addr=lan,
                                        relay_server=fla.relay_server, id=b.id,
                                        version="1.4.9")))
    r = a.recv().punch_hole_response
    assert r.WhichOneof("union") == "is_local" and r.is_local
    assert demangle(r.socket_addr) == ("192.168.1.7", 40000)
    _check_idpk(gw, b, r.pk)
    assert r.relay_server == RELAY
    assert _fields(r) == {"socket_addr", "pk", "relay_server", "is_local"}


def test_b_initiated_relay(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub, nat_type=pb.SYMMETRIC))
    ph = b.recv_kind("punch_hole").punch_hole
    assert ph.nat_type == pb.SYMMETRIC
    uid = str(uuidlib.uuid4())
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(relay_response=pb.RelayResponse(
        socket_addr=ph.socket_addr, uuid=uid, relay_server=ph.relay_server, id=b.id,
        version="1.4.9")))
    rr = a.recv().relay_response
    assert rr.socket_addr == b"" and rr.uuid == uid and rr.relay_server == RELAY
    assert rr.WhichOneof("union") == "pk"
    _check_idpk(gw, b, rr.pk)
    assert _fields(rr) == {"uuid", "relay_server", "pk", "version"}


def test_a_initiated_relay(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    uid = str(uuidlib.uuid4())
    a.send(msg(request_relay=pb.RequestRelay(id=b.id, uuid=uid, relay_server=RELAY,
                                             secure=True, conn_type=pb.DEFAULT_CONN)))
    rr = b.recv_kind("request_relay").request_relay
    assert demangle(rr.socket_addr) == a.local
    assert rr.uuid == uid and rr.relay_server == RELAY and rr.secure and rr.id == b.id
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(relay_response=pb.RelayResponse(socket_addr=rr.socket_addr,
                                                version="1.4.9")))
    got = a.recv().relay_response
    assert got.socket_addr == b"" and got.WhichOneof("union") is None and got.pk == b""


# ------------------------------------------------------------------ secure TCP
def test_secure_tcp_punch(env: Env) -> None:
    """A logged-in controller: wait for the signed key, seal ours, then encrypted frames."""
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.secure(gw.pub)
    a.send(punch_request(b.id, gw.pub, token="api-token"))
    ph = b.recv_kind("punch_hole").punch_hole
    assert demangle(ph.socket_addr) == a.local
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))  # B's short connection stays in clear
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                 version="1.4.9")))
    r = a.recv().punch_hole_response  # decrypted with counter 1
    _check_idpk(gw, b, r.pk)
    a.send(b"")  # heartbeats stay raw and do not move the counters
    a.send(punch_request(new_id(), gw.pub))
    assert a.recv().punch_hole_response.failure == pb.PunchHoleResponse.ID_NOT_EXIST


def test_secure_tcp_relay_request(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.secure(gw.pub)
    a.send(msg(request_relay=pb.RequestRelay(id=b.id, uuid="u-1", token="t")))
    rr = b.recv_kind("request_relay").request_relay
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(relay_response=pb.RelayResponse(socket_addr=rr.socket_addr, version="1.4.9")))
    assert kind(a.recv()) == "relay_response"


def test_logged_out_client_never_sees_key_exchange_first(env: Env) -> None:
    """A client that speaks at once reads its answer as the first frame (1.1.x clients)."""
    gw = env.gw
    c = Tcp(H, gw.port)
    c.send(msg(test_nat_request=pb.TestNatRequest()))
    assert kind(c.recv(skip_kx=False)) == "test_nat_response"


def test_bad_key_exchange_closes(env: Env) -> None:
    gw = env.gw
    c = Tcp(H, gw.port)
    c.recv_payload()  # the server's KeyExchange
    c.send(msg(key_exchange=pb.KeyExchange(keys=[bytes(32), bytes(48)])))
    assert c.closed_by_server(2.0)


# ------------------------------------------------------------------ TCP / WS registration
def _stream_register(conn: Tcp | Ws, b: UdpPeer) -> pb.RegisterPkResponse:
    conn.send(msg(register_pk=pb.RegisterPk(id=b.id, uuid=b.uuid, pk=b.pk)))
    m = conn.recv()
    assert kind(m) == "register_pk_response"
    return m.register_pk_response


def test_tcp_registration_mode(env: Env) -> None:
    """Proxy / UDP-disabled clients: secure TCP, RegisterPk, keep-alive, pushes on the stream."""
    gw = env.gw
    b = UdpPeer(gw.udp)  # only for its identity
    conn = Tcp(H, gw.port, src=(b.src_ip, 0))
    conn.secure(gw.pub)
    r = _stream_register(conn, b)
    assert r.result == OK and r.keep_alive > 0
    # The server keeps the stream alive with empty frames well inside 1.5 x keep_alive.
    assert conn.recv_payload(timeout=r.keep_alive) == b""
    conn.send(b"")  # the client echoes them
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub))
    ph = conn.recv().punch_hole
    assert demangle(ph.socket_addr) == a.local
    q = Tcp(H, gw.port - 1)
    q.send(msg(online_request=pb.OnlineRequest(id="x", peers=[b.id])))
    assert q.recv(skip_kx=False).online_response.states == b"\x80"


def test_ws_registration_and_punch(env: Env) -> None:
    """WebSocket mode: no KeyExchange, registration on the stream, no LAN shortcut."""
    gw = env.gw
    b = UdpPeer(gw.udp)
    bw = Ws(H, gw.port + 2)
    r = _stream_register(bw, b)
    assert r.result == OK and r.keep_alive > 0
    aw = Ws(H, gw.port + 2, path="/anything")
    aw.send(punch_request(b.id, gw.pub))
    m = bw.recv()
    assert kind(m) == "punch_hole"  # same IP, but a WebSocket request never gets FetchLocalAddr
    uid = str(uuidlib.uuid4())
    bt = Ws(H, gw.port + 2)
    bt.send(msg(relay_response=pb.RelayResponse(socket_addr=m.punch_hole.socket_addr, uuid=uid,
                                                relay_server=RELAY, id=b.id,
                                                version="1.4.9")))
    rr = aw.recv().relay_response
    assert rr.uuid == uid
    _check_idpk(gw, b, rr.pk)


def test_change_id(env: Env) -> None:
    gw = env.gw
    b = _b(gw)
    new = "hub" + uuidlib.uuid4().hex[:10]

    def change(old: str, to: str, uuid: bytes) -> int:
        c = Tcp(H, gw.port)
        c.send(msg(register_pk=pb.RegisterPk(old_id=old, id=to, uuid=uuid)))
        result = int(c.recv().register_pk_response.result)
        assert c.closed_by_server(2.0)
        return result

    assert change(b.id, "1bad", b.uuid) == pb.RegisterPkResponse.INVALID_ID_FORMAT
    assert change(b.id, new, b"someone-else") != OK
    assert change(b.id, new, b.uuid) == OK
    other = _b(gw)
    assert change(other.id, new, other.uuid) == pb.RegisterPkResponse.ID_EXISTS
    b.id = new
    b.register_pk()  # the client re-registers its key under the new ID
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK
    a = Tcp(H, gw.port)
    a.send(punch_request(new, gw.pub))
    assert kind(b.recv_kind("punch_hole")) == "punch_hole"


# ------------------------------------------------------------------ hostile input
def test_oversized_frame_closes(env: Env) -> None:
    c = Tcp(H, env.gw.port)
    c.send_raw((((1 << 20) << 2) | 2).to_bytes(3, "little"))
    assert c.closed_by_server(3.0)


# ------------------------------------------------------------------ settings
def test_serial_config_update_and_always_relay(env: Env) -> None:
    gw = env.start("-k", "_", "-s", "7", "-R", "rs1.example,rs2.example",
                   env={"ALWAYS_USE_RELAY": "Y"})
    b = UdpPeer(gw.udp)
    b.register_peer(serial=3)
    got = {kind(b.recv()[0]), kind(b.recv()[0])}
    assert got == {"register_peer_response", "configure_update"}
    b.register_pk()
    b.recv_kind("register_pk_response")
    b.register_peer(serial=7)
    b.recv_kind("register_peer_response")
    b.register_peer(serial=3)
    cu = b.recv_kind("configure_update").configure_update
    assert cu.serial == 7 and list(cu.rendezvous_servers) == ["rs1.example", "rs2.example"]
    c = Tcp(H, gw.port)
    c.send(msg(test_nat_request=pb.TestNatRequest(serial=1)))
    r = c.recv().test_nat_response
    assert r.HasField("cu") and r.cu.serial == 7
    c = Tcp(H, gw.port - 1)
    c.send(msg(test_nat_request=pb.TestNatRequest(serial=1)))
    assert not c.recv(skip_kx=False).test_nat_response.HasField("cu")
    # ALWAYS_USE_RELAY: B is told A is symmetric, even behind the same public IP.
    lan_b = UdpPeer(gw.udp, src_ip=H)
    lan_b.register()
    a = Tcp(H, gw.port)
    a.send(punch_request(lan_b.id, gw.pub, nat_type=pb.ASYMMETRIC))
    ph = lan_b.recv_kind("punch_hole").punch_hole
    assert ph.nat_type == pb.SYMMETRIC


def test_key_semantics(env: Env, tmp_path: Path) -> None:
    # hubbub keygen writes hbbs-format files.
    res = env.cluster.hubbub("keygen", "--data-dir", str(tmp_path / "k"))
    assert res.returncode == 0, res.stderr
    sec = (tmp_path / "k" / "id_ed25519").read_text()
    pub = (tmp_path / "k" / "id_ed25519.pub").read_text()
    raw = base64.b64decode(sec.strip())
    assert len(raw) == 64 and base64.b64encode(raw[32:]).decode() == pub
    assert len(pub) == 44 and "/" not in pub and not pub.endswith("\n")
    assert f"Public Key:  {pub}" in res.stdout and sec.strip() in res.stdout
    # -k <secret key>: signs with it and requires its public key.
    gw = env.start("-k", sec.strip())
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, env.gw.pub))
    assert a.recv().punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    a.send(punch_request(b.id, pub))
    ph = b.recv_kind("punch_hole").punch_hole
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                 version="1.4.9")))
    assert verify_idpk(pub, a.recv().punch_hole_response.pk) == (b.id, b.pk)
    # -k <public key>: that text is required, nothing is signed, no KeyExchange offered.
    gw2 = env.start("-k", pub)
    b2 = _b(gw2)
    a2 = Tcp(H, gw2.port)
    time.sleep(0.3)
    a2.send(punch_request(b2.id, pub))
    ph2 = b2.recv_kind("punch_hole").punch_hole
    bt2 = Tcp(H, gw2.port, src=("127.0.0.2", 0))
    bt2.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph2.socket_addr, id=b2.id,
                                                  version="1.4.9")))
    first = a2.recv(skip_kx=False)
    assert kind(first) == "punch_hole_response" and first.punch_hole_response.pk == b""
    # -k <public key of the data-dir pair>: hbbs would stop signing (a quirk not copied).
    gw3 = env.start("-k", env.gw.pub)
    b3 = _b(gw3)
    a3 = Tcp(H, gw3.port)
    a3.send(punch_request(b3.id, RUSTDESK_COM_KEY))
    assert a3.recv().punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    a3.send(punch_request(b3.id, env.gw.pub))
    ph3 = b3.recv_kind("punch_hole").punch_hole
    bt3 = Tcp(H, gw3.port, src=("127.0.0.2", 0))
    bt3.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph3.socket_addr, id=b3.id,
                                                  version="1.4.9")))
    assert verify_idpk(env.gw.pub, a3.recv().punch_hole_response.pk) == (b3.id, b3.pk)
    s3 = Tcp(H, gw3.port)
    s3.secure(env.gw.pub)  # and logged-in clients get their KeyExchange


def test_import_hbbs(env: Env, tmp_path: Path) -> None:
    db_path = tmp_path / "db_v2.sqlite3"
    db = sqlite3.connect(db_path)
    db.execute("create table peer (guid blob primary key not null, id varchar(100) not null, "
               "uuid blob not null, pk blob not null, created_at datetime not null default "
               "current_timestamp, user blob, status tinyint, note varchar(300), "
               "info text not null) without rowid")
    pid = new_id()
    uuid = b"machine-uid-1234"
    pk = bytes(range(32))
    db.execute("insert into peer (guid, id, uuid, pk, info) values (?, ?, ?, ?, ?)",
               (uuidlib.uuid4().bytes, pid, uuid, pk, '{"ip":"::ffff:127.0.0.2"}'))
    db.commit()
    db.close()
    res = env.cluster.hubbub("import-hbbs", str(db_path))
    assert res.returncode == 0, res.stdout + res.stderr
    gw = env.gw
    # Known but not heard since: OFFLINE, not ID_NOT_EXIST.
    a = Tcp(H, gw.port)
    a.send(punch_request(pid, gw.pub))
    assert a.recv_payload().hex() == "5a021802"
    # Another machine cannot take the imported ID; the owner can come back.
    thief = UdpPeer(gw.udp, peer_id=pid)
    thief.register_pk()
    assert (thief.recv_kind("register_pk_response").register_pk_response.result
            == pb.RegisterPkResponse.UUID_MISMATCH)
    owner = UdpPeer(gw.udp, peer_id=pid)
    owner.uuid, owner.pk = uuid, pk
    owner.register_pk()
    assert owner.recv_kind("register_pk_response").register_pk_response.result == OK


# ------------------------------------------------------------------ IPv6
def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_peer(env: Env) -> None:
    gw = env.start("-k", "_", env={"BIND": "::1"}, v6=True)
    b = UdpPeer(("::1", gw.port), src_ip="::1")
    b.register()
    a = Ws("::1", gw.port + 2)  # WebSocket: PunchHole rather than the LAN shortcut
    a.send(punch_request(b.id, gw.pub))
    ph = b.recv_kind("punch_hole").punch_hole
    assert len(ph.socket_addr) == 18 and demangle(ph.socket_addr) == a.local
    bt = Tcp("::1", gw.port)
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                 version="1.4.9")))
    r = a.recv().punch_hole_response
    assert demangle(r.socket_addr) == bt.local
    _check_idpk(gw, b, r.pk)


def test_plan_lan_relay_with_always_relay() -> None:
    """ALWAYS_USE_RELAY with B inside MASK hands B the LAN relay address, as hbbs does."""
    from gateway.rendezvous.logic import parse_mask, plan_punch

    net = parse_mask("10.0.0.0/8")
    both = plan_punch("10.1.1.1", "10.2.2.2", websocket=False, always_relay=True, network=net,
                      local_ip="10.0.0.1", relay_server="r.example")
    assert both.force_symmetric and not both.fetch_local and both.relay_server == "10.0.0.1"
    outside = plan_punch("8.8.8.8", "9.9.9.9", websocket=False, always_relay=True,
                         network=net, local_ip="10.0.0.1", relay_server="r.example")
    assert outside.relay_server == "r.example"


def test_udp_punch_and_ipv6_fields_extension(env: Env) -> None:
    """UDP NAT test, UDP PunchHoleSent answered only on A's TCP, IPv6 fields carried through."""
    gw = env.gw
    b = _b(gw)
    probe = UdpPeer(gw.udp)
    probe.send(msg(test_nat_request=pb.TestNatRequest()))
    r, addr = probe.recv()
    assert addr[1] == gw.port and r.test_nat_response.port == probe.port
    a = Tcp(H, gw.port)
    a_v6 = mangle("2001:db8::1", 4000)
    a.send(punch_request(b.id, gw.pub, udp_port=probe.port, upnp_port=9, force_relay=False,
                         socket_addr_v6=a_v6))
    ph = b.recv_kind("punch_hole").punch_hole
    assert ph.udp_port == probe.port and ph.upnp_port == 9 and ph.socket_addr_v6 == a_v6
    # B answers over UDP from a fresh socket, three times; A hears once, on its TCP connection.
    fresh = UdpPeer(gw.udp)
    b_v6 = mangle("2001:db8::2", 5000)
    sent = msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                version="1.4.9", socket_addr_v6=b_v6))
    for _ in range(3):
        fresh.send(sent)
        time.sleep(0.02)
    resp = a.recv().punch_hole_response
    assert resp.is_udp and demangle(resp.socket_addr) == (fresh.src_ip, fresh.port)
    assert resp.socket_addr_v6 == b_v6
    _check_idpk(gw, b, resp.pk)
    with pytest.raises(TimeoutError):
        fresh.recv(0.3)  # nothing is ever sent to an address taken from a message


def test_unknown_fields_survive_forwarding(env: Env) -> None:
    """Fields from newer clients (e.g. SDP answers) pass through re-forwarded messages."""
    gw = env.gw
    b = _b(gw)
    a = Tcp(H, gw.port)
    extra = b"\x62\x03sdp"  # field 12, length-delimited: unknown to this schema
    rr = pb.RequestRelay(id=b.id, uuid="u-2", relay_server=RELAY).SerializeToString() + extra
    a.send(b"\x92\x01" + bytes([len(rr)]) + rr)
    got = b.recv_kind("request_relay").request_relay
    assert got.SerializeToString().endswith(extra) or extra in got.SerializeToString()
    resp = pb.RelayResponse(socket_addr=got.socket_addr, version="1.4.9").SerializeToString()
    resp += extra
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(b"\x9a\x01" + bytes([len(resp)]) + resp)
    back = a.recv().relay_response
    assert extra in back.SerializeToString()


# ------------------------------------------------------------------ relay (hbbr)
def _recv_exact(t: Tcp, n: int, timeout: float = TIMEOUT_RELAY) -> bytes:
    out = t.buf
    t.buf = b""
    end = time.monotonic() + timeout
    while len(out) < n:
        t.sock.settimeout(max(0.01, end - time.monotonic()))
        chunk = t.sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_relay_pairs_and_pipes(env: Env) -> None:
    relay_port = free_port_block(3)
    env.cluster.start("shard", env=shard_env(KEY="_", RELAY_PORT=str(relay_port)))
    pub = env.gw.pub
    # Wrong key: closed without a reply.
    bad = Tcp(H, relay_port)
    bad.send(msg(request_relay=pb.RequestRelay(uuid="x", licence_key=RUSTDESK_COM_KEY)))
    assert bad.closed_by_server(3.0)
    console = Tcp(H, relay_port)  # hbbr treats loopback text as console commands; not here
    console.send_raw(b"h")
    console.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        console.sock.recv(100)
    no_uuid = Tcp(H, relay_port)
    no_uuid.send(msg(request_relay=pb.RequestRelay(licence_key=pub)))
    assert no_uuid.closed_by_server(3.0)
    other = Tcp(H, relay_port)
    other.send(msg(punch_hole_request=pb.PunchHoleRequest(id="x", licence_key=pub)))
    assert other.closed_by_server(3.0)
    # TCP <-> TCP: raw pipe, including bytes sent right behind the first frame.
    uid = str(uuidlib.uuid4())
    a = Tcp(H, relay_port)
    a.send_raw(frame(msg(request_relay=pb.RequestRelay(uuid=uid, licence_key=pub)))
               + b"early-bytes")
    b = Tcp(H, relay_port)
    b.send(msg(request_relay=pb.RequestRelay(uuid=uid, licence_key=pub)))
    assert _recv_exact(b, 11) == b"early-bytes"
    b.send_raw(b"\x00\x01raw")
    assert _recv_exact(a, 5) == b"\x00\x01raw"
    # WS <-> TCP: one WS binary message per TCP frame payload.
    uid2 = str(uuidlib.uuid4())
    w = Ws(H, relay_port + 2, path="/ws/relay")
    w.send(msg(request_relay=pb.RequestRelay(uuid=uid2, licence_key=pub)))
    t = Tcp(H, relay_port)
    t.send(msg(request_relay=pb.RequestRelay(uuid=uid2, licence_key=pub)))
    time.sleep(0.2)
    w.send(b"hello")
    assert t._read_frame(TIMEOUT_RELAY) == b"hello"
    t.send_raw(frame(b"world"))
    assert w.recv_payload() == b"world"
    # WS <-> WS.
    uid3 = str(uuidlib.uuid4())
    w1 = Ws(H, relay_port + 2, path="/ws/relay")
    w2 = Ws(H, relay_port + 2, path="/ws/relay")
    w1.send(msg(request_relay=pb.RequestRelay(uuid=uid3, licence_key=pub)))
    w2.send(msg(request_relay=pb.RequestRelay(uuid=uid3, licence_key=pub)))
    time.sleep(0.2)
    w1.send(b"ping")
    assert w2.recv_payload() == b"ping"


def test_ws_controllers_behind_one_proxy_address(env: Env) -> None:
    """Two web clients with the same X-Real-IP each get their own answer."""
    gw = env.start("-k", "_", env={"TRUSTED_PROXIES": "127.0.0.5"})
    hdr = {"X-Real-IP": "198.51.100.77"}
    b1, b2 = _b(gw), _b(gw)
    a1 = Ws(H, gw.port + 2, headers=hdr, src_ip="127.0.0.5")
    a2 = Ws(H, gw.port + 2, headers=hdr, src_ip="127.0.0.5")
    a1.send(punch_request(b1.id, gw.pub))
    a2.send(punch_request(b2.id, gw.pub))
    ph1 = b1.recv_kind("punch_hole").punch_hole
    ph2 = b2.recv_kind("punch_hole").punch_hole
    assert demangle(ph1.socket_addr)[0] == demangle(ph2.socket_addr)[0] == "198.51.100.77"
    for b, ph in ((b2, ph2), (b1, ph1)):
        bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
        bt.send(msg(relay_response=pb.RelayResponse(
            socket_addr=ph.socket_addr, uuid="u-" + b.id, relay_server=RELAY, id=b.id,
            version="1.4.9")))
    assert a1.recv().relay_response.uuid == "u-" + b1.id
    assert a2.recv().relay_response.uuid == "u-" + b2.id


def test_register_pk_rate_per_id(env: Env) -> None:
    """At most 3 accepted RegisterPk per ID per 6 s; another machine's attempts do not count."""
    gw = env.gw
    b = _b(gw)  # 1
    thief = UdpPeer(gw.udp, peer_id=b.id, src_ip="127.0.0.4")
    for _ in range(4):
        thief.register_pk()
        assert (thief.recv_kind("register_pk_response").register_pk_response.result
                == pb.RegisterPkResponse.UUID_MISMATCH)
    b.register_pk()  # 2
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK
    b.register_pk()  # 3
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK
    b.register_pk()  # 4: too frequent; the client logs it and retries in 15 s
    assert (b.recv_kind("register_pk_response").register_pk_response.result
            == pb.RegisterPkResponse.TOO_FREQUENT)
    thief.register_pk()  # still told the ID is taken, not "too frequent"
    assert (thief.recv_kind("register_pk_response").register_pk_response.result
            == pb.RegisterPkResponse.UUID_MISMATCH)


def test_stream_register_peer_and_unknown_messages(env: Env) -> None:
    """RegisterPeer on a TCP/WS stream is answered; unknown messages do not cut a registration."""
    gw = env.gw
    b = UdpPeer(gw.udp)
    w = Ws(H, gw.port + 2)
    w.send(msg(register_peer=pb.RegisterPeer(id=b.id)))
    assert w.recv().register_peer_response.request_pk
    assert _stream_register(w, b).result == OK
    w.send(msg(register_peer=pb.RegisterPeer(id=b.id)))
    assert not w.recv().register_peer_response.request_pk
    w.send(b"\xea\x01\x02\x0a\x00")  # field 29 (IceCandidate on a development branch)
    w.send(msg(register_peer=pb.RegisterPeer(id=b.id)))
    assert kind(w.recv()) == "register_peer_response"
    # Without a registration, the same unknown message ends a one-shot connection (as hbbs).
    t = Tcp(H, gw.port)
    t.send(b"\xea\x01\x02\x0a\x00")
    assert t.closed_by_server(2.0)


def test_admin_always_use_relay_keeps_relay_list(env: Env) -> None:
    """``aur Y`` forces relaying without wiping the relay list (an hbbs console bug)."""
    gw = env.gw

    def admin(*words: str) -> str:
        res = env.cluster.hubbub("admin", *words)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout.strip()

    admin("aur", "Y")
    try:
        b = _b(gw)
        deadline = time.monotonic() + 8
        while True:
            a = Tcp(H, gw.port)
            a.send(punch_request(b.id, gw.pub, nat_type=pb.ASYMMETRIC))
            ph = b.recv_kind("punch_hole").punch_hole
            if ph.nat_type == pb.SYMMETRIC or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert ph.nat_type == pb.SYMMETRIC and ph.relay_server == RELAY
    finally:
        admin("aur", "-")


def test_new_device_key_is_signed_at_once_everywhere(env: Env) -> None:
    """After a reinstall (same machine, new key) every gateway vouches for the new key."""
    g1 = env.gw
    g2 = env.start("-k", "_", "-r", RELAY)
    b = _b(g1)

    def punch_via_g2() -> bytes:
        a = Tcp(H, g2.port)
        a.send(punch_request(b.id, g2.pub))
        ph = b.recv_kind("punch_hole").punch_hole
        bt = Tcp(H, g2.port, src=("127.0.0.2", 0))
        bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                     version="1.4.9")))
        pk: bytes = a.recv().punch_hole_response.pk
        return pk

    assert verify_idpk(g2.pub, punch_via_g2()) == (b.id, b.pk)
    b.sk = SigningKey.generate()
    b.pk = bytes(b.sk.verify_key)
    b.register_pk()  # through g1
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK
    assert verify_idpk(g2.pub, punch_via_g2()) == (b.id, b.pk)


def test_change_id_unicode_word_characters(env: Env) -> None:
    """The client's rule ``^[a-zA-Z][\\w-]{5,15}$`` is Unicode-aware: such IDs work end to end."""
    gw = env.gw
    b = _b(gw)
    new = "Büro-" + uuidlib.uuid4().hex[:6]
    c = Tcp(H, gw.port)
    c.send(msg(register_pk=pb.RegisterPk(old_id=b.id, id=new, uuid=b.uuid)))
    assert c.recv().register_pk_response.result == OK
    b.id = new
    b.register_pk()
    assert b.recv_kind("register_pk_response").register_pk_response.result == OK
    q = Tcp(H, gw.port - 1)
    q.send(msg(online_request=pb.OnlineRequest(id="x", peers=[new])))
    assert q.recv(skip_kx=False).online_response.states == b"\x80"


def test_stream_peer_goes_offline_with_its_connection(env: Env) -> None:
    gw = env.gw
    b = UdpPeer(gw.udp)
    w = Ws(H, gw.port + 2)
    assert _stream_register(w, b).result == OK
    w.close()
    deadline = time.monotonic() + 5
    states = b"\x80"
    while states != b"\x00" and time.monotonic() < deadline:
        time.sleep(0.1)
        q = Tcp(H, gw.port - 1)
        q.send(msg(online_request=pb.OnlineRequest(id="x", peers=[b.id])))
        states = q.recv(skip_kx=False).online_response.states
    assert states == b"\x00"
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, gw.pub))
    assert a.recv_payload().hex() == "5a021802"  # OFFLINE


def test_ws_text_is_ignored(env: Env) -> None:
    """Text messages on the WebSocket port are not protocol messages and get no answer."""
    gw = env.gw
    w = Ws(H, gw.port + 2)
    w.ws.send("hello")
    w.send(msg(online_request=pb.OnlineRequest(id="x", peers=["nobody-here"])))
    assert w.recv().online_response.states == b"\x00"


def test_health_check_and_http_proxy_on_secure_tcp(env: Env) -> None:
    gw = env.gw
    hc = Tcp(H, gw.port)
    hc.secure(gw.pub)
    hc.send(msg(hc=pb.HealthCheck(token="t")))
    assert hc.recv_payload() == b""  # kept open and kept alive with empty frames
    hc.send(b"")
    assert not hc.closed_by_server(0.5)
    hp = Tcp(H, gw.port)
    hp.secure(gw.pub)
    hp.send(msg(http_proxy_request=pb.HttpProxyRequest(method="GET", path="/api/heartbeat")))
    r = hp.recv()
    assert kind(r) == "http_proxy_response"  # exactly one answer, as the client expects
    assert r.http_proxy_response.status >= 400 or r.http_proxy_response.error


def test_unset_key_defaults_to_hbbs_dash(env: Env) -> None:
    """With KEY unset the ID server behaves as ``hbbs -k -``: the public key is required."""
    gw = env.start(env={"KEY": None})
    b = _b(gw)
    a = Tcp(H, gw.port)
    a.send(punch_request(b.id, ""))
    assert a.recv().punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    a.send(punch_request(b.id, RUSTDESK_COM_KEY))
    assert a.recv().punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    a.send(punch_request(b.id, gw.pub))
    ph = b.recv_kind("punch_hole").punch_hole
    bt = Tcp(H, gw.port, src=("127.0.0.2", 0))
    bt.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.socket_addr, id=b.id,
                                                 version="1.4.9")))
    assert verify_idpk(gw.pub, a.recv().punch_hole_response.pk) == (b.id, b.pk)
