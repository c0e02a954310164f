"""ID-server flows in process: bytes in, bytes out, no sockets (real Redis for the state)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.rendezvous.conns import Conn
from gateway.rendezvous.records import MODE_UDP, Live
from gateway.rendezvous.service import RendezvousService
from hubbub.config import Config
from hubbub.runtime import Context
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.crypto import verify_id_pk
from hubbub.wire.rustdesk.messages import parse, pb
from registry import Registry


Msg = pb.RendezvousMessage
R = pb.RegisterPkResponse


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[Any, ...]]] = []

    def send(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        self.sent.append((data, addr))
        return True

    def take(self) -> list[tuple[Msg, tuple[Any, ...]]]:
        out = [(parse(d), a) for d, a in self.sent]
        self.sent.clear()
        return [(m, a) for m, a in out if m is not None]


class FakeConn(Conn):
    def __init__(self, addr: tuple[str, int], websocket: bool = False) -> None:
        super().__init__(addr)
        self.websocket = websocket
        self.out: list[Msg] = []

    async def send_message(self, payload: bytes) -> None:
        m = parse(payload)
        assert m is not None
        self.out.append(m)

    async def send_heartbeat(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
async def svc(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[RendezvousService]:
    cfg = Config(role="gateway", redis_url=redis_url, prefix=prefix, data_dir=str(tmp_path),
                 key="_", bind="127.0.0.1", mask="192.168.0.0/16", local_ip="192.168.0.1",
                 relay_servers=("relay.example",))
    reg = Registry(redis_url, prefix, "gateway", "testhost", presence=False)
    ctx = Context(cfg, reg, None, "testhost")  # type: ignore[arg-type]
    service = RendezvousService(ctx)
    service.udp = FakeUdp()  # type: ignore[assignment]
    try:
        yield service
    finally:
        await reg.redis.aclose()


async def settle(svc: RendezvousService) -> None:
    for _ in range(50):
        if not svc._tasks:
            return
        await svc._tasks.wait()


def udp(svc: RendezvousService) -> FakeUdp:
    assert isinstance(svc.udp, FakeUdp)
    return svc.udp


async def register(svc: RendezvousService, peer_id: str, src: tuple[Any, ...],
                   uuid: bytes = b"machine-1", pk: bytes = b"p" * 32) -> int:
    svc.on_datagram(Msg(register_pk=pb.RegisterPk(id=peer_id, uuid=uuid, pk=pk))
                    .SerializeToString(), src)
    await settle(svc)
    ((m, to),) = udp(svc).take()
    assert to == src
    return int(m.register_pk_response.result)


async def test_registration_rules(svc: RendezvousService) -> None:
    src = ("203.0.113.5", 40000)
    hb = Msg(register_peer=pb.RegisterPeer(id="123456789")).SerializeToString()
    svc.on_datagram(hb, src)
    await settle(svc)
    assert udp(svc).sent == [(bytes.fromhex("3a021001"), src)]  # unknown: request_pk
    udp(svc).sent.clear()
    assert await register(svc, "123456789", src) == R.OK
    svc.on_datagram(hb, src)
    assert udp(svc).sent == [(bytes.fromhex("3a00"), src)]  # known: no Redis, no pk
    udp(svc).sent.clear()
    assert await register(svc, "123456789", src, uuid=b"machine-2") == R.UUID_MISMATCH
    # Same uuid, new IP and new key at once: refused as well (hbbs rule).
    assert await register(svc, "123456789", ("198.51.100.1", 1), pk=b"q" * 32) == \
        R.UUID_MISMATCH
    assert await register(svc, "bad id", src) == R.INVALID_ID_FORMAT
    # An IP change on a heartbeat asks for the key again and is logged for admins.
    svc.on_datagram(hb, ("198.51.100.1", 5))
    assert udp(svc).take()[0][0].register_peer_response.request_pk
    assert "123456789" in svc.core.peers.ip_changes
    # Empty uuid or pk: dropped without an answer.
    svc.on_datagram(Msg(register_pk=pb.RegisterPk(id="x1")).SerializeToString(), src)
    await settle(svc)
    assert udp(svc).sent == []


async def test_per_id_limit(svc: RendezvousService) -> None:
    src = ("203.0.113.6", 1)
    results = [await register(svc, "555555555", src) for _ in range(4)]
    assert results == [R.OK, R.OK, R.OK, R.TOO_FREQUENT]


async def test_punch_flow_bytes(svc: RendezvousService, tmp_path: Path) -> None:
    b_src = ("203.0.113.7", 41000)
    assert await register(svc, "777777777", b_src) == R.OK
    pub = (tmp_path / "id_ed25519.pub").read_text()
    a = FakeConn(("198.51.100.20", 50000))
    req = Msg(punch_hole_request=pb.PunchHoleRequest(
        id="777777777", licence_key=pub, nat_type=pb.ASYMMETRIC, version="1.4.9",
        udp_port=1234, upnp_port=99, force_relay=True, socket_addr_v6=b"v" * 18))
    assert await svc.handle(a, req.SerializeToString(), main=True)
    ((ph, to),) = udp(svc).take()
    assert to == b_src and ph.WhichOneof("union") == "punch_hole"
    hole = ph.punch_hole
    assert addrmangle.decode(hole.socket_addr) == a.addr
    assert (hole.relay_server, hole.nat_type, hole.udp_port, hole.upnp_port, hole.force_relay,
            hole.socket_addr_v6) == ("relay.example", pb.ASYMMETRIC, 1234, 99, True, b"v" * 18)
    assert a.out == []  # A waits for B
    b = FakeConn(("203.0.113.7", 41001))
    sent = Msg(punch_hole_sent=pb.PunchHoleSent(
        socket_addr=hole.socket_addr, id="777777777", relay_server="relay.example",
        nat_type=pb.SYMMETRIC, version="1.4.9"))
    assert not await svc.handle(b, sent.SerializeToString(), main=True)  # B's conn closes
    (resp,) = a.out
    r = resp.punch_hole_response
    assert addrmangle.decode(r.socket_addr) == b.addr and r.nat_type == pb.SYMMETRIC
    assert verify_id_pk(base64.b64decode(pub), r.pk) == ("777777777", b"p" * 32)
    # Only the first answer reaches A.
    assert not await svc.handle(b, sent.SerializeToString(), main=True)
    assert len(a.out) == 1


async def test_punch_failures(svc: RendezvousService) -> None:
    a = FakeConn(("198.51.100.21", 50001))
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="777777777", licence_key="wrong")).SerializeToString(), main=True)
    assert a.out[-1].punch_hole_response.failure == pb.PunchHoleResponse.LICENSE_MISMATCH
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="nobody", licence_key=svc.key.licence)).SerializeToString(), main=True)
    assert a.out[-1].SerializeToString() == bytes.fromhex("5a00")  # ID_NOT_EXIST


async def test_lan_rules_and_relay_response_rewrite(svc: RendezvousService) -> None:
    b_src = ("192.168.3.3", 41000)  # inside --mask
    assert await register(svc, "888888888", b_src) == R.OK
    a = FakeConn(("203.0.113.50", 50000))  # outside: exactly one side is LAN
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="888888888", licence_key=svc.key.licence,
        nat_type=pb.ASYMMETRIC)).SerializeToString(), main=True)
    ((ph, _),) = udp(svc).take()
    assert ph.punch_hole.nat_type == pb.SYMMETRIC
    assert ph.punch_hole.relay_server == "192.168.0.1"  # LOCAL_IP for a LAN B
    # B relays; its RelayResponse names LOCAL_IP, which A (outside) cannot reach.
    rr = Msg(relay_response=pb.RelayResponse(socket_addr=ph.punch_hole.socket_addr, uuid="u1",
                                             relay_server="192.168.0.1", id="888888888",
                                             version="1.4.9"))
    await svc.handle(FakeConn(b_src), rr.SerializeToString(), main=True)
    got = a.out[-1].relay_response
    assert got.relay_server == "relay.example" and got.WhichOneof("union") == "pk"
    assert not got.socket_addr and got.uuid == "u1"


async def test_websocket_never_gets_the_lan_shortcut(svc: RendezvousService) -> None:
    b_src = ("203.0.113.9", 41000)
    assert await register(svc, "999999999", b_src) == R.OK
    a = FakeConn(("203.0.113.9", 0), websocket=True)  # same public IP, but over WebSocket
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="999999999", licence_key=svc.key.licence)).SerializeToString(), main=True)
    ((m, _),) = udp(svc).take()
    assert m.WhichOneof("union") == "punch_hole"


async def test_online_and_nat_port_rules(svc: RendezvousService) -> None:
    assert await register(svc, "111111111", ("203.0.113.10", 1)) == R.OK
    c = FakeConn(("198.51.100.30", 7))
    q = Msg(online_request=pb.OnlineRequest(id="me", peers=["x", "111111111"] + ["y"] * 7))
    assert not await svc.handle(c, q.SerializeToString(), main=False)
    assert c.out[-1].online_response.states == b"\x40\x00"
    # The NAT port answers only NAT tests and online queries.
    assert not await svc.handle(c, Msg(punch_hole_request=pb.PunchHoleRequest(id="x"))
                                .SerializeToString(), main=False)
    assert len(c.out) == 1
    assert not await svc.handle(c, b"\xff\xff", main=True)  # garbage closes


async def test_change_id_flow(svc: RendezvousService) -> None:
    src = ("203.0.113.11", 1)
    assert await register(svc, "222222222", src, uuid=b"dev-1") == R.OK
    assert await register(svc, "333333333", src, uuid=b"dev-2") == R.OK
    c = FakeConn(src)

    async def change(old: str, new: str, uuid: bytes) -> int:
        await svc.handle(c, Msg(register_pk=pb.RegisterPk(old_id=old, id=new, uuid=uuid))
                         .SerializeToString(), main=True)
        return int(c.out[-1].register_pk_response.result)

    assert await change("222222222", "Bob_the_dev", b"dev-2") == R.UUID_MISMATCH
    assert await change("222222222", "333", b"dev-1") == R.INVALID_ID_FORMAT
    assert await change("222222222", "Bob_the_dev", b"dev-1") == R.OK
    assert await change("333333333", "Bob_the_dev", b"dev-2") == R.ID_EXISTS
    rec = await svc.store.peer("Bob_the_dev")
    assert rec is not None and rec.uuid == b"dev-1" and await svc.store.peer("222222222") is None


async def test_dual_stack_addresses(svc: RendezvousService) -> None:
    svc._udp_v6 = True  # as on the default "::" socket
    b4 = ("::ffff:203.0.113.40", 41000, 0, 0)
    assert await register(svc, "444444444", b4) == R.OK
    b6 = ("2001:db8::5", 42000, 0, 0)
    assert await register(svc, "666666666", b6) == R.OK
    a6 = FakeConn(("2001:db8::9", 50000))
    for target, want in (("444444444", ("::ffff:203.0.113.40", 41000, 0, 0)),
                         ("666666666", ("2001:db8::5", 42000))):
        await svc.handle(a6, Msg(punch_hole_request=pb.PunchHoleRequest(
            id=target, licence_key=svc.key.licence)).SerializeToString(), main=True)
        ((m, to),) = udp(svc).take()
        assert to == want
        assert len(m.punch_hole.socket_addr) == 18  # A's IPv6 address
        assert addrmangle.decode(m.punch_hole.socket_addr) == a6.addr


async def test_push_for_a_vanished_owner_uses_the_shared_port(svc: RendezvousService) -> None:
    b_src = ("203.0.113.60", 41000)
    assert await register(svc, "121212121", b_src) == R.OK
    svc.core.peers.entries.clear()  # as if another gateway, now dead, had heard B last
    live = Live("", 41000, time.time(), "dead00", svc.udp_port, MODE_UDP)
    await svc.store.flush_live([("121212121", live)], time.time())
    a = FakeConn(("198.51.100.61", 5))
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="121212121", licence_key=svc.key.licence)).SerializeToString(), main=True)
    ((m, to),) = udp(svc).take()
    assert to == b_src and m.WhichOneof("union") == "punch_hole"
    live2 = Live("", 41000, time.time(), "dead00", svc.udp_port + 1, MODE_UDP)
    await svc.store.flush_live([("121212121", live2)], time.time())
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id="121212121", licence_key=svc.key.licence)).SerializeToString(), main=True)
    assert udp(svc).take() == [] and a.out[-1].punch_hole_response.failure == \
        pb.PunchHoleResponse.OFFLINE


async def test_registration_burst_never_exhausts_redis_connections(
        svc: RendezvousService) -> None:
    for i in range(400):  # more at once than the Redis connection pool holds
        src = (f"10.{i // 250}.{i % 250}.1", 1000 + i)
        svc.on_datagram(Msg(register_pk=pb.RegisterPk(
            id=f"3{i:08d}", uuid=b"u%d" % i, pk=b"k" * 32)).SerializeToString(), src)
    await settle(svc)
    results = [m.register_pk_response.result for m, _ in udp(svc).take()]
    assert len(results) == 400 and set(results) == {R.OK}
