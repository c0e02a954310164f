"""A change of binding takes effect on every gateway at once (real gateways, one Redis).

Two gateways on different ports pin each client to a process: device B heartbeats to G1 (the
"holder"); the change is handled by G1 or by G2; controllers punch through both right after
the answer, with every cache warmed by earlier punches.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from rustdesk_sim import Peer, TcpClient, close_all, msg, verify_signed
from support import Cluster, HubbubProcess, RedisServer, free_port, free_port_block, new_prefix
from test_rustdesk_service import FakeConn, FakeUdp, settle

from gateway.rendezvous.bindings import KIND_KEY, KIND_MOVED, KIND_REMOVED, BindingChanged
from gateway.rendezvous.records import MODE_UDP, Live, binding_gen
from gateway.rendezvous.service import RendezvousService
from gateway.rendezvous.store import CHANGE_OK, Store
from hubbub.config import Config, load_config, new_parser
from hubbub.embedded_redis import RedisCluster
from hubbub.errors import ContractError
from hubbub.runtime import Context
from hubbub.wire.rustdesk.messages import pb
from registry import RedisTarget, Registry


OK = pb.RegisterPkResponse.OK
B_IP = "127.0.0.2"


@dataclass
class Env:
    cluster: Cluster
    gateways: tuple[HubbubProcess, HubbubProcess]
    ports: tuple[int, int]
    pub: str


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(scope="module")
def env(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("rebind")
    cluster = Cluster(redis_srv.url, new_prefix(), workdir)
    try:
        ports = (free_port_block(4) + 1, free_port_block(4) + 1)
        gws = tuple(cluster.start("gateway", "-p", str(p), "--spaces-port", str(free_port()),
                                  "-k", "_") for p in ports)
        pub = (workdir / "data" / "id_ed25519.pub").read_text()
        yield Env(cluster, (gws[0], gws[1]), ports, pub)
    finally:
        cluster.stop_all()


def _id() -> str:
    return str(1_000_000_000 + uuidlib.uuid4().int % 899_999_999)


def _new_id() -> str:
    return "Moved-" + uuidlib.uuid4().hex[:8]


def _punch(env: Env, port: int, target: str) -> TcpClient:
    a = TcpClient("127.0.0.1", port)
    a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=target, licence_key=env.pub,
                                                      version="1.4.9")))
    return a


def _failure(a: TcpClient) -> int:
    r = a.recv()
    assert r is not None and r.WhichOneof("union") == "punch_hole_response", r
    return int(r.punch_hole_response.failure)


def _connects(env: Env, b: Peer, port: int, as_id: str) -> None:
    """A controller on ``port`` asks for ``as_id``: B gets the PunchHole from the gateway it
    last registered with and answers as ``b.id``; A gets an IdPk signed for ``as_id``."""
    a = _punch(env, port, as_id)
    ph = b.recv_udp(("punch_hole",))
    assert ph is not None, f"no PunchHole for {as_id} through :{port}"
    assert b.last_src == ("127.0.0.1", b.port)
    t = TcpClient("127.0.0.1", env.ports[0], src_ip=B_IP)
    t.send(msg(punch_hole_sent=pb.PunchHoleSent(socket_addr=ph.punch_hole.socket_addr, id=b.id,
                                                version="1.4.9")))
    r = a.recv()
    assert r is not None and r.WhichOneof("union") == "punch_hole_response", r
    assert verify_signed(env.pub, r.punch_hole_response.pk) == (as_id, b.pk)
    a.close()
    t.close()


def _change(env: Env, port: int, old: str, new: str, uuid: bytes) -> int:
    c = TcpClient("127.0.0.1", port)
    c.send(msg(register_pk=pb.RegisterPk(old_id=old, id=new, uuid=uuid)))
    r = c.recv()
    c.close()
    assert r is not None
    return int(r.register_pk_response.result)


def _online(env: Env, port: int, ids: list[str]) -> bytes:
    c = TcpClient("127.0.0.1", port)
    c.send(msg(online_request=pb.OnlineRequest(id="me", peers=ids)))
    r = c.recv()
    c.close()
    assert r is not None
    return bytes(r.online_response.states)


def _eventually(check: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("handler", [0, 1], ids=["holder", "other"])
def test_change_id_everywhere_at_once(env: Env, handler: int) -> None:
    b = Peer("127.0.0.1", env.ports[0], _id(), src_ip=B_IP)
    b.register()
    old, new = b.id, _new_id()
    # Warm every cache both gateways keep: local liveness, sinks, signed IdPks, punch logs.
    for port in env.ports:
        _connects(env, b, port, old)
    assert b.heartbeat() is False
    assert _change(env, env.ports[handler], old, new, b.uuid) == OK
    b.id = new  # the client saves its new ID on OK
    for port in env.ports:
        assert _failure(_punch(env, port, old)) == pb.PunchHoleResponse.ID_NOT_EXIST
        _connects(env, b, port, new)  # before B re-registers: its liveness moved with the ID
    assert b.recv_udp(("punch_hole",), timeout=0.3) is None  # nothing for the old ID reached B
    # The holder no longer vouches for the old ID: a late heartbeat under it is asked for the
    # key (which the client then registers under its new ID).
    b.id = old
    assert _eventually(lambda: b.heartbeat() is True)
    b.id = new
    b.register()
    time.sleep(1.3)  # past a liveness flush: nothing brings the old ID back
    for port in env.ports:
        assert _failure(_punch(env, port, old)) == pb.PunchHoleResponse.ID_NOT_EXIST
        assert _online(env, port, [old, new]) == b"\x40"
        _connects(env, b, port, new)
    b.close()


@pytest.mark.parametrize("handler", [0, 1], ids=["holder", "other"])
def test_new_key_everywhere_at_once(env: Env, handler: int) -> None:
    b = Peer("127.0.0.1", env.ports[0], _id(), src_ip=B_IP)
    b.register()
    for port in env.ports:
        _connects(env, b, port, b.id)
    # The device registers a new key through the handler (same socket, same machine).
    b.sk = type(b.sk).generate()
    b.port = env.ports[handler]
    assert b.register_pk() == OK
    for port in env.ports:
        _connects(env, b, port, b.id)  # signed with the new key everywhere, at once
    b.close()


def test_admin_removal_everywhere_at_once(env: Env) -> None:
    b = Peer("127.0.0.1", env.ports[0], _id(), src_ip=B_IP)
    b.register()
    for port in env.ports:
        _connects(env, b, port, b.id)
    res = env.cluster.hubbub("admin", "remove", b.id)
    assert res.returncode == 0 and "removed" in res.stdout, res.stderr
    for port in env.ports:
        assert _failure(_punch(env, port, b.id)) == pb.PunchHoleResponse.ID_NOT_EXIST
    assert _eventually(lambda: b.heartbeat() is True)  # the holder asks for the key again
    b.register()
    for port in env.ports:
        _connects(env, b, port, b.id)
    b.close()


def test_stream_registration_follows_its_new_id(env: Env) -> None:
    """A TCP-registered device: its stream on G1 answers to the new ID as soon as the change
    handled by G2 is answered."""
    b = Peer("127.0.0.1", env.ports[0], _id(), src_ip=B_IP)
    s = TcpClient("127.0.0.1", env.ports[0], src_ip=B_IP)
    s.send(msg(register_pk=pb.RegisterPk(id=b.id, uuid=b.uuid, pk=b.pk)))
    r = s.recv()
    assert r is not None and r.register_pk_response.result == OK
    old, new = b.id, _new_id()
    assert _change(env, env.ports[1], old, new, b.uuid) == OK
    for port in reversed(env.ports):
        assert _failure(_punch(env, port, old)) == pb.PunchHoleResponse.ID_NOT_EXIST
        a = _punch(env, port, new)
        got = s.recv()
        assert got is not None and got.WhichOneof("union") == "punch_hole", got
        a.close()
    s.close()
    b.close()


# ------------------------------------------------------------------ in process, no sockets
# Two services on one Redis that never subscribe: every BindingChanged is "missed" unless a
# test hands it over, so these show what the read-time checks guarantee on their own.

Msg = pb.RendezvousMessage
R = pb.RegisterPkResponse


class Conn(FakeConn):
    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(addr)
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
async def pair(redis_url: str, prefix: str, tmp_path: Path
               ) -> AsyncIterator[tuple[RendezvousService, RendezvousService]]:
    cfg = Config(role="gateway", redis_url=redis_url, prefix=prefix, data_dir=str(tmp_path),
                 key="_", bind="127.0.0.1")
    svcs, regs = [], []
    for _ in range(2):
        reg = Registry(redis_url, prefix, "gateway", "testhost", presence=False)
        svc = RendezvousService(Context(cfg, reg, None, "testhost"))  # type: ignore[arg-type]
        svc.udp = FakeUdp()  # type: ignore[assignment]
        svcs.append(svc)
        regs.append(reg)
    try:
        yield svcs[0], svcs[1]
    finally:
        for reg in regs:
            await reg.redis.aclose()


def _sent(svc: RendezvousService) -> list[tuple[Msg, tuple[Any, ...]]]:
    assert isinstance(svc.udp, FakeUdp)
    return svc.udp.take()


async def _register(svc: RendezvousService, peer_id: str, src: tuple[str, int],
                    uuid: bytes = b"dev", pk: bytes = b"p" * 32) -> int:
    svc.on_datagram(Msg(register_pk=pb.RegisterPk(id=peer_id, uuid=uuid, pk=pk))
                    .SerializeToString(), src)
    await settle(svc)
    ((m, _),) = _sent(svc)
    return int(m.register_pk_response.result)


async def _heartbeat(svc: RendezvousService, peer_id: str, src: tuple[str, int]) -> bool:
    svc.on_datagram(Msg(register_peer=pb.RegisterPeer(id=peer_id)).SerializeToString(), src)
    await settle(svc)
    return bool(_sent(svc)[0][0].register_peer_response.request_pk)


async def _ask(svc: RendezvousService, peer_id: str) -> tuple[Msg | None, list[Any]]:
    """A punch request for ``peer_id``: (A's answer if any, what left by UDP)."""
    a = Conn(("198.51.100.99", 50000))
    await svc.handle(a, Msg(punch_hole_request=pb.PunchHoleRequest(
        id=peer_id, licence_key=svc.key.licence)).SerializeToString(), main=True)
    return (a.out[-1] if a.out else None), _sent(svc)


async def test_a_gateway_that_missed_the_news_serves_nothing_stale(
        pair: tuple[RendezvousService, RendezvousService]) -> None:
    holder, other = pair
    b = ("203.0.113.70", 41000)
    assert await _register(holder, "515151515", b, uuid=b"dev-m") == R.OK
    assert not await _heartbeat(holder, "515151515", b)
    c = Conn(("203.0.113.70", 41001))
    await other.handle(c, Msg(register_pk=pb.RegisterPk(
        old_id="515151515", id="Renamed_515", uuid=b"dev-m")).SerializeToString(), main=True)
    assert c.out[-1].register_pk_response.result == R.OK
    assert "515151515" in holder.core.peers  # the news never arrived here
    # A controller asking the holder for the old ID: the read shows no binding.
    for svc in (holder, other):
        answer, udp = await _ask(svc, "515151515")
        assert answer is not None and answer.SerializeToString() == bytes.fromhex("5a00")
        assert udp == []
    assert "515151515" not in holder.core.peers
    # The new ID is reachable through either at once (the liveness moved with the binding).
    answer, udp = await _ask(holder, "Renamed_515")
    assert answer is None and [(m.WhichOneof("union"), to) for m, to in udp] == [
        ("punch_hole", b)]
    # A late heartbeat under the old ID may still be answered from a fresh entry, but the
    # flush that would publish it is refused and the entry dropped.
    now = time.time()
    holder.core.peers.verified("515151515", b[0], b[1], MODE_UDP, b[0], b"stale-gen", now)
    assert not await _heartbeat(holder, "515151515", b)
    await holder.flush_now()
    assert "515151515" not in holder.core.peers
    assert await holder.store.lives(["515151515"]) == [None]
    assert await _heartbeat(holder, "515151515", b)  # asked for its key again


async def test_binding_news_on_every_change(
        pair: tuple[RendezvousService, RendezvousService]) -> None:
    first, second = pair
    store = first.store
    pubsub = first.registry.redis.pubsub()
    await pubsub.subscribe(store.bindings_channel)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    b = ("203.0.113.71", 41000)
    assert await _register(first, "525252525", b, uuid=b"dev-n") == R.OK  # a first binding:
    assert await _register(first, "525252525", b, uuid=b"dev-n") == R.OK  # silent, as unchanged
    assert await _register(second, "525252525", b, uuid=b"dev-n", pk=b"q" * 32) == R.OK
    assert await store.change_id("525252525", "Renamed_525", b"dev-n") == CHANGE_OK
    assert await store.import_peer("Renamed_525", b"dev-n", b"r" * 32, b[0], True)
    assert await store.remove_peer("Renamed_525")
    assert not await store.remove_peer("Renamed_525")
    news = []
    while (m := await pubsub.get_message(timeout=0.5)) is not None:
        news.append(BindingChanged.decode(m["data"]))
    await pubsub.aclose()
    assert [(e.kind, e.peer_id, e.new_id) for e in news] == [
        (KIND_KEY, "525252525", ""),
        (KIND_MOVED, "525252525", "Renamed_525"), (KIND_KEY, "Renamed_525", ""),
        (KIND_REMOVED, "Renamed_525", "")]
    # The generation is the content's: the scripts and the gateways compute the same one, a
    # moved binding keeps it, any other change gives a new one.
    assert news[0].gen == news[1].gen == binding_gen(b"dev-n", b"q" * 32, b[0].encode())
    assert len({news[0].gen, news[2].gen}) == 2 and news[3].gen == b""
    assert BindingChanged.decode(news[1].encode()) == news[1]
    for junk in (b"\xc1", b"\x90", msgpack.packb([1, "other", "x", "", b""]),
                 msgpack.packb([1, KIND_MOVED, "x", "", b""]),
                 b"\x95\x02\xa3key\xa1x\xa0\xa0"):
        with pytest.raises(ContractError):
            BindingChanged.decode(junk)
        first.rebinding.on_news(junk)  # dropped, never raised


async def test_registration_streams_follow_their_binding(
        pair: tuple[RendezvousService, RendezvousService]) -> None:
    gw, other = pair
    s = Conn(("203.0.113.72", 41000))

    async def stream_register(conn: Conn, peer_id: str, pk: bytes = b"p" * 32) -> None:
        await gw.handle(conn, Msg(register_pk=pb.RegisterPk(
            id=peer_id, uuid=b"dev-s", pk=pk)).SerializeToString(), main=True)
        assert conn.out[-1].register_pk_response.result == R.OK

    await stream_register(s, "535353535")
    gw._stream_alive(s)
    # A new key registered elsewhere (same device): the stream stays, under the new binding.
    assert await _register(other, "535353535", s.addr, uuid=b"dev-s", pk=b"q" * 32) == R.OK
    rec = await gw.store.peer("535353535")
    assert rec is not None
    gw.rebinding.binding_changed(BindingChanged(KIND_KEY, "535353535", "", rec.gen))
    await settle(gw)
    assert gw.streams.get("535353535") is s and s.registered_gen == rec.gen and not s.closed
    gw._stream_alive(s)  # its next frame: heard here again, under the new binding
    await gw.flush_now()
    assert (await gw.store.lives(["535353535"]))[0].owner == gw.token  # type: ignore[union-attr]
    # Moved: the stream answers to the new ID; a missed news is made up by the next punch.
    res, gen = await other.store.move_id("535353535", "Stream_535", b"dev-s")
    assert res == CHANGE_OK
    gw.rebinding.binding_changed(BindingChanged(KIND_MOVED, "535353535", "Stream_535", gen))
    assert gw.streams.get("Stream_535") is s and s.registered_id == "Stream_535"
    answer, _ = await _ask(gw, "Stream_535")
    assert answer is None and s.out[-1].WhichOneof("union") == "punch_hole"
    # Removed while this gateway was not listening: the next look-up finds no binding and
    # the stream must register again.
    assert await other.store.remove_peer("Stream_535")
    answer, _ = await _ask(gw, "Stream_535")
    assert answer is not None and answer.punch_hole_response.failure == \
        pb.PunchHoleResponse.ID_NOT_EXIST
    await settle(gw)
    assert "Stream_535" not in gw.streams and s.closed and s.registered_id is None


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too and, like it, outside the
    ephemeral range (where an outgoing connection could take it before the node binds)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = free_port()
        if port + 10000 >= low:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no port pair for a cluster node")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """The smallest cluster there is: three primaries, no replicas."""
    c = RedisCluster(tmp_path, [_cluster_port() for _ in range(3)], replicas=0,
                     node_timeout_ms=1000, durable=False)
    try:
        c.start()
        yield c
    finally:
        c.stop()


async def test_binding_news_and_guarded_flush_on_redis_cluster(
        redis_cluster: RedisCluster) -> None:
    """On Cluster: the scripts' news reach a broadcast subscriber, the guarded flush loads
    its script on the primaries and refuses a stale generation."""
    cfg = load_config("gateway", new_parser("t").parse_args([]), redis_cluster.env(), None)
    reg = Registry(RedisTarget.from_config(cfg), new_prefix(), "gateway", "h", ttl=1.5)
    got: list[BindingChanged | None] = []
    await reg.start()
    try:
        assert await reg.wait_ready(10)
        store = Store(reg)
        await reg.subscribe(store.bindings_channel,
                            lambda data: got.append(BindingChanged.decode(data)), broadcast=True)
        live = Live("", 1000, time.time(), "tok", 21116, MODE_UDP)
        _, gen = await store.register("cl1", b"u1", b"k" * 32, "10.0.0.1", live)
        assert await store.flush_bound([("cl1", live, gen), ("cl1", live, b"stale")],
                                       time.time()) == (1, ["cl1"])
        assert await store.change_id("cl1", "Cluster_1", b"u1") == CHANGE_OK
        assert await store.remove_peer("Cluster_1")
        deadline = time.monotonic() + 3
        while len(got) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [(e.kind, e.peer_id) for e in got if e is not None] == [
            (KIND_MOVED, "cl1"), (KIND_REMOVED, "Cluster_1")]  # a first binding is silent
    finally:
        await reg.close()


def _primary_of(c: RedisCluster, key: str) -> int:
    """The port of the primary serving ``key``."""
    with c.nodes[0].client() as r:
        slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(primary[1])
    raise AssertionError("slot not served")


async def test_peers_spread_over_the_primaries_of_a_cluster(
        redis_cluster: RedisCluster, tmp_path: Path) -> None:
    """Each peer's keys carry its own tag: they land on every primary, and registration,
    punches, the guarded flush, online queries, a change of ID between two primaries
    (including the crash cases of its steps) and removal work across them."""
    cfg = load_config("gateway", new_parser("t").parse_args([]),
                      {**redis_cluster.env(), "DATA_DIR": str(tmp_path), "KEY": "_",
                       "BIND": "127.0.0.1"}, None)
    reg = Registry(RedisTarget.from_config(cfg), new_prefix(), "gateway", "h", ttl=1.5)
    await reg.start()
    try:
        assert await reg.wait_ready(10)
        svc = RendezvousService(Context(cfg, reg, None, "h"))  # type: ignore[arg-type]
        svc.udp = FakeUdp()  # type: ignore[assignment]
        store = svc.store
        ids = [f"spread{i:03d}" for i in range(30)]
        for i, pid in enumerate(ids):
            assert await _register(svc, pid, (f"203.0.113.{i + 1}", 42000), uuid=pid.encode()
                                   ) == R.OK
        homes = {_primary_of(redis_cluster, store.peer_key(p)) for p in ids}
        assert len(homes) == 3
        assert all(_primary_of(redis_cluster, store.live_key(p))
                   == _primary_of(redis_cluster, store.peer_key(p)) for p in ids)
        # One guarded flush over peers on all primaries; a stale generation is refused.
        now = time.time()
        live = Live("", 42000, now, svc.token, 21116, MODE_UDP)
        batch = [(p, live, binding_gen(p.encode(), b"p" * 32, f"203.0.113.{i + 1}".encode()))
                 for i, p in enumerate(ids)]
        assert await store.flush_bound([*batch, ("spread000", live, b"stale")], now) == (
            30, ["spread000"])
        assert all(x is not None for x in await store.lives(ids))
        # A punch for a peer on any primary reaches it.
        answer, udp = await _ask(svc, "spread007")
        assert answer is None and [m.WhichOneof("union") for m, _ in udp] == ["punch_hole"]
        # Change of ID between two primaries.
        old = "spread001"
        new = next(f"Moved_{i}" for i in range(100)
                   if _primary_of(redis_cluster, store.peer_key(f"Moved_{i}"))
                   != _primary_of(redis_cluster, store.peer_key(old)))
        c = Conn(("203.0.113.2", 42001))
        await svc.handle(c, Msg(register_pk=pb.RegisterPk(
            old_id=old, id=new, uuid=old.encode())).SerializeToString(), main=True)
        assert c.out[-1].register_pk_response.result == R.OK
        assert await store.peer(old) is None
        rec = await store.peer(new)
        assert rec is not None and rec.uuid == old.encode()
        assert set(await reg.redis.hkeys(store.peer_key(new))) == {b"u", b"k", b"ip"}
        answer, udp = await _ask(svc, new)
        assert answer is None and [m.WhichOneof("union") for m, _ in udp] == ["punch_hole"]
        # Taken by another device: refused, the old ID stays bound and unmarked.
        assert await store.change_id("spread002", new, b"spread002") == 3
        assert set(await reg.redis.hkeys(store.peer_key("spread002"))) == {b"u", b"k", b"ip"}
        # Crash after mark + claim: the old ID stays the binding, the claim is not bound.
        src, dst = "spread003", "Crashed_3"
        m = await store._mark(keys=[store.peer_key(src), store.live_key(src)],
                              args=[src.encode(), dst])
        await store._claim(keys=[store.peer_key(dst), store.live_key(dst)],
                           args=[src.encode(), m[2], m[3], src, m[4], m[5]])
        assert (await store.peer(src)) is not None and await store.peer(dst) is None
        assert (await store.lookup(dst)) == (None, None)
        # Another device cannot take the ID while the claim is pending ...
        assert await store.change_id("spread004", dst, b"spread004") == 3
        # ... and a retry of the same change completes it.
        assert await store.change_id(src, dst, src.encode()) == CHANGE_OK
        assert await store.peer(src) is None and await store.peer(dst) is not None
        # Crash after mark + claim, then the old ID moves elsewhere: the claim is aborted,
        # deleted by its first reader, and the ID free for another device.
        src, dst = "spread005", "Crashed_5"
        m = await store._mark(keys=[store.peer_key(src), store.live_key(src)],
                              args=[src.encode(), dst])
        await store._claim(keys=[store.peer_key(dst), store.live_key(dst)],
                           args=[src.encode(), m[2], m[3], src, m[4], m[5]])
        assert await store.change_id(src, "Elsewhere_5", src.encode()) == CHANGE_OK
        assert await store.peer(dst) is None and not await reg.redis.exists(store.peer_key(dst))
        assert await store.change_id("spread006", dst, b"spread006") == CHANGE_OK
        # Crash after the commit: the new ID is bound, its marker dropped by a registration.
        src, dst = "spread008", "Crashed_8"
        m = await store._mark(keys=[store.peer_key(src), store.live_key(src)],
                              args=[src.encode(), dst])
        await store._claim(keys=[store.peer_key(dst), store.live_key(dst)],
                           args=[src.encode(), m[2], m[3], src, m[4], m[5]])
        await store._decide(keys=[store.peer_key(src), store.live_key(src)],
                            args=[src.encode(), dst, "1"])
        assert await _register(svc, dst, ("203.0.113.9", 42000), uuid=src.encode()) == R.OK
        assert set(await reg.redis.hkeys(store.peer_key(dst))) == {b"u", b"k", b"ip"}
        # Removal.
        assert await store.remove_peer(new)
        assert await store.peer(new) is None and await store.lives([new]) == [None]
        hist = await store.id_history()
        assert f"{old} {new}" in " | ".join(hist)
    finally:
        await reg.close()
