"""Fail-over and outage of the control plane with real servers (slow: run with ``-m slow``).

* Sentinel: 1,000 devices registered across two gateways, the primary SIGKILLed; time until
  registrations succeed again, and every acknowledged binding still on the new primary.
* Cluster: the primary holding the ID-server slot SIGKILLed mid-run; registrations and inbox
  requests resume on the promoted replica, nothing acknowledged is lost.
* Degraded mode: Redis unreachable for 30 s; the gateway stays live, stops being ready, keeps
  answering known peers' heartbeats, never acknowledges a registration, and recovers by itself.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from redis.crc import key_slot
from rustdesk_sim import Peer, TcpClient, close_all, msg
from support import (
    Cluster,
    HubbubProcess,
    free_port,
    free_port_block,
    http_get,
    new_prefix,
    shard_env,
)
from wired_client import WiredClient

from gateway.rendezvous.logic import split_host_port
from hubbub.embedded_redis import LocalRedis, RedisCluster, SentinelSet, free_cluster_ports
from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import parse, pb
from loadtest.cluster import rss_bytes


pytestmark = pytest.mark.slow

OK = pb.RegisterPkResponse.OK
DEVICES = 1000


def _gateways(cluster: Cluster, env: dict[str, str]) -> tuple[list[HubbubProcess], list[int]]:
    ports = [free_port_block(4) + 1 for _ in range(2)]
    procs = [cluster.start("gateway", "-p", str(p), "--spaces-port", str(free_port()), env=env)
             for p in ports]
    return procs, ports


def _heartbeat_all(peers: list[Peer], timeout: float = 5.0) -> int:
    """Send every peer's RegisterPeer at once, resending to the unanswered every second (a
    burst of 1,000 datagrams may overflow a socket buffer, and real clients resend too); how
    many were answered within ``timeout``."""
    sel = selectors.DefaultSelector()
    for p in peers:
        p.udp.setblocking(False)
        sel.register(p.udp, selectors.EVENT_READ, p.id)
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    resend = 0.0
    try:
        while len(answered) < len(peers) and time.monotonic() < deadline:
            if time.monotonic() >= resend:
                for p in peers:
                    if p.id not in answered:
                        with contextlib.suppress(BlockingIOError):
                            p.send_udp(msg(register_peer=pb.RegisterPeer(id=p.id, serial=0)))
                resend = time.monotonic() + 1.0
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(BlockingIOError):
                    m = parse(sock.recv(65536))
                    if m is not None and m.WhichOneof("union") == "register_peer_response":
                        answered.add(key.data)
    finally:
        sel.close()
        for p in peers:
            p.udp.setblocking(True)
    return len(answered)


def _register_until_ok(ports: list[int], tag: str, since: float, acked: list[Peer],
                       known: list[Peer] | None = None,
                       slots: set[int] | None = None) -> tuple[float, int, int]:
    """Register new devices across the gateways until one is acknowledged (30 s at most);
    between tries, heartbeat the ``known`` devices. Returns (seconds since ``since`` until the
    first OK, heartbeats sent, heartbeats answered). ``slots``: only IDs hashing there."""
    sent = answered = 0
    i = 0
    while time.monotonic() - since < 30:
        if slots is not None and key_slot(f"{tag}{i:05d}".encode()) not in slots:
            i += 1
            continue
        peer = Peer("127.0.0.1", ports[i % 2], f"{tag}{i:05d}", src_ip=_src(5000 + i))
        peer.send_udp(pb.RendezvousMessage(register_pk=pb.RegisterPk(
            id=peer.id, uuid=peer.uuid, pk=peer.pk)))
        r = peer.recv_udp(("register_pk_response",), timeout=2.0)
        peer.close()
        if r is not None and r.register_pk_response.result == OK:
            acked.append(peer)
            return time.monotonic() - since, sent, answered
        if known:
            sent += 1
            answered += known[i % len(known)].heartbeat() is not None
        i += 1
        time.sleep(0.05)
    raise AssertionError("registrations never came back")


def _src(i: int) -> str:
    """A loopback source address per device: the ID server limits registrations per IP."""
    return f"127.{1 + i // 250}.{i % 250}.1"


def _status(proc: HubbubProcess, path: str) -> int:
    try:
        return http_get(f"{proc.ops_url}{path}", 1.0)[0]
    except OSError:
        return 0


URI = "https://example.org/failover.glb"


class Flows:
    """Two gateways and two shards on one control plane, with the RustDesk, relay and spaces
    flows the fail-over tests keep running."""

    def __init__(self, cluster: Cluster, env: dict[str, str], workdir: Path) -> None:
        # The production presence TTL: a fail-over (2-3 s here) must fit inside it, or the
        # processes whose calls hit the dead primary look dead to the others.
        self.env = shard_env(slots=2) | env | {"KEY": "_", "PRESENCE_TTL": "5"}
        self.shards = [cluster.start("shard", env=self.env) for _ in range(2)]
        self.ports = [free_port_block(4) + 1 for _ in range(2)]
        self.spaces = [free_port() for _ in range(2)]
        self.gateways = [
            cluster.start("gateway", "-p", str(p), "--spaces-port", str(sp),
                          env=self.env | {"ALWAYS_USE_RELAY": "Y"})
            for p, sp in zip(self.ports, self.spaces, strict=True)]
        self.pub = (workdir / "data" / "id_ed25519.pub").read_text()

    def relay_pair(self, name: str, src: str) -> tuple[TcpClient, TcpClient]:
        """B registers at gateway 2, A asks gateway 1 (the request crosses inboxes), both
        halves meet on a shard; returns (A's half, B's half) after a first exchange."""
        b = Peer("127.0.0.1", self.ports[1], name, src_ip=src)
        b.register()
        relay, ph, a = "", None, None
        deadline = time.monotonic() + 15
        while not relay and time.monotonic() < deadline:
            a = TcpClient("127.0.0.1", self.ports[0])
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, licence_key=self.pub,
                                                              version="1.4.9")))
            ph = b.recv_udp(("punch_hole",), timeout=2.0)
            relay = ph.punch_hole.relay_server if ph is not None else ""
            if not relay:
                a.close()
                time.sleep(0.3)
        assert relay and ph is not None and a is not None, f"no punch hole for {name}"
        uuid = str(uuidlib.uuid4())
        t = TcpClient("127.0.0.1", self.ports[1], src_ip=src)
        t.send(msg(relay_response=pb.RelayResponse(socket_addr=ph.punch_hole.socket_addr,
                                                   uuid=uuid, relay_server=relay, id=b.id,
                                                   version="1.4.9")))
        host, rport = split_host_port(relay, 21117)
        b_half = TcpClient(host, rport, src_ip=src)
        b_half.send(msg(request_relay=pb.RequestRelay(licence_key=self.pub, uuid=uuid)))
        r = a.recv(5.0)
        assert r is not None and r.WhichOneof("union") == "relay_response"
        a_half = TcpClient(host, rport)
        a_half.send(msg(request_relay=pb.RequestRelay(licence_key=self.pub, uuid=uuid, id=b.id)))
        exchange(a_half, b_half, b"first")
        return a_half, b_half

    async def space(self) -> tuple[WiredClient, WiredClient]:
        a = await WiredClient.connect(f"ws://127.0.0.1:{self.spaces[0]}/")
        b = await WiredClient.connect(f"ws://127.0.0.1:{self.spaces[1]}/")
        await a.join(URI)
        await b.join(URI)
        await chat(b, a, "before")
        return a, b


def exchange(a_half: TcpClient, b_half: TcpClient, data: bytes) -> None:
    a_half.send_raw(encode_frame(data))
    assert b_half.recv_frame(5.0) == data
    b_half.send_raw(encode_frame(data[::-1]))
    assert a_half.recv_frame(5.0) == data[::-1]


async def chat(sender: WiredClient, receiver: WiredClient, text: str) -> None:
    """A chat line gets through within 10 s (pub/sub is at most once: a line published while
    a gateway re-subscribes after a fail-over is lost, so the sender says it again)."""
    for attempt in range(10):
        line = f"{text} #{attempt}"
        await sender.send("chat", line)
        with contextlib.suppress(TimeoutError):
            await receiver.wait_for("player_chat", timeout=1.0,
                                    where=lambda d, line=line: d["text"] == line)
            return
    raise AssertionError(f"{text!r} never arrived")


def _bound(node: LocalRedis, prefix: str, peer: Peer, tagged: bool = False) -> bool:
    """``prefix`` ends where ``peer:<id>`` starts; ``tagged``: the ID is the slot tag
    (Cluster mode)."""
    pid = f"{{{peer.id}}}" if tagged else peer.id
    with node.client() as c:
        return bool(c.hget(f"{prefix}peer:{pid}", "u") == peer.uuid)


async def test_sentinel_failover_loses_no_acknowledged_binding(tmp_path: Path) -> None:
    s = SentinelSet(tmp_path / "redis", free_port(), [free_port() for _ in range(3)],
                    down_after_ms=1000, durable=False)
    cluster = Cluster(s.env()["REDIS_URL"], new_prefix(), tmp_path)
    spaces: tuple[WiredClient, WiredClient] | None = None
    try:
        s.start()
        flows = Flows(cluster, s.env(), tmp_path)
        ports = flows.ports
        devices = [Peer("127.0.0.1", ports[i % 2], f"fo{i:05d}", src_ip=_src(i))
                   for i in range(DEVICES)]
        acked = [d for d in devices if d.register_pk() == OK]
        assert len(acked) == DEVICES and _heartbeat_all(devices) == DEVICES
        known = [Peer("127.0.0.1", ports[i % 2], f"known{i:02d}", src_ip=_src(4000 + i))
                 for i in range(10)]
        for k in known:
            k.register()
        pair = flows.relay_pair("rlbefore", _src(4100))
        spaces = await flows.space()
        old = s.primary_node()
        killed = time.monotonic()
        old.stop(signal.SIGKILL)
        # Every device's heartbeat is answered while there is no primary at all.
        during = _heartbeat_all(devices)
        recovered, heartbeats, answered_heartbeats = _register_until_ok(
            ports, "nw", killed, acked, known)
        new = s.primary_node()
        assert new is not old
        lost = [p.id for p in acked if not _bound(new, f"{cluster.prefix}rd:", p)]
        exchange(*pair, b"through the fail-over")
        await chat(spaces[1], spaces[0], "after the fail-over")
        flows.relay_pair("rlafter1", _src(4101))
        print(f"\nsentinel fail-over: registrations back after {recovered:.2f}s, "
              f"{len(acked)} acknowledged, {len(lost)} lost, heartbeats of all devices "
              f"answered during it {during}/{DEVICES}, known heartbeats answered "
              f"{answered_heartbeats}/{heartbeats}; relay pair, space and new punches continue")
        assert during == DEVICES
        assert lost == []
        assert recovered <= 10.0
        assert answered_heartbeats == heartbeats
        for g in flows.gateways:
            assert g.proc.poll() is None
            deadline = time.monotonic() + 10
            while _status(g, "/readyz") != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _status(g, "/readyz") == 200
    finally:
        if spaces is not None:
            for c in spaces:
                await c.close()
        close_all()
        cluster.stop_all()
        s.stop()


def _slots_of(c: RedisCluster, primary: LocalRedis) -> set[int]:
    with primary.client() as r:
        return {slot for first, last, owner, *_ in r.execute_command("CLUSTER", "SLOTS")
                if int(owner[1]) == primary.port for slot in range(first, last + 1)}


def _slot_owner(c: RedisCluster, key: str) -> LocalRedis:
    """The live primary serving ``key``'s slot, as a live node reports it."""
    slot = key_slot(key.encode())
    for node in c.nodes:
        if not node.alive:
            continue
        with node.client() as r:
            for first, last, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return next(n for n in c.nodes if n.port == int(primary[1]))
    raise AssertionError("slot not served")


async def test_cluster_flows_survive_a_primary_killed_mid_run(tmp_path: Path) -> None:
    c = RedisCluster(tmp_path / "redis", free_cluster_ports(6), node_timeout_ms=1000,
                     durable=False)
    cluster = Cluster(c.env()["REDIS_URL"], new_prefix(), tmp_path)
    spaces: tuple[WiredClient, WiredClient] | None = None
    try:
        c.start()
        flows = Flows(cluster, c.env(), tmp_path)
        ports = flows.ports
        acked: list[Peer] = []
        for i in range(300):
            peer = Peer("127.0.0.1", ports[i % 2], f"cl{i:05d}", src_ip=_src(i))
            if peer.register_pk() == OK:
                acked.append(peer)
            peer.close()
        assert len(acked) == 300
        known = Peer("127.0.0.1", ports[0], "knowncl1", src_ip=_src(4000))
        known.register()
        pair = flows.relay_pair("rlclbefore", _src(4100))
        spaces = await flows.space()
        # Each device's keys carry its own tag: kill a primary that holds some of them and
        # time the registrations of IDs on its slots.
        rd_key = f"{cluster.prefix}rd:peer:{{{acked[0].id}}}"
        victim = _slot_owner(c, rd_key)
        victim_slots = _slots_of(c, victim)
        assert any(key_slot(p.id.encode()) not in victim_slots for p in acked)
        killed = time.monotonic()
        victim.stop(signal.SIGKILL)
        recovered, _, _ = _register_until_ok(ports, "cn", killed, acked, slots=victim_slots)
        assert _slot_owner(c, rd_key) is not victim
        lost = [p.id for p in acked
                if not _bound(_slot_owner(c, f"rd:peer:{{{p.id}}}"), f"{cluster.prefix}rd:", p,
                              tagged=True)]
        exchange(*pair, b"through the fail-over")
        await chat(spaces[1], spaces[0], "after the fail-over")
        flows.relay_pair("rlclafter", _src(4101))
        # UDP: a client resends an unanswered heartbeat.
        assert any(known.heartbeat() is not None for _ in range(3))
        print(f"\ncluster fail-over: registrations back after {recovered:.2f}s, "
              f"{len(acked)} acknowledged, {len(lost)} lost; relay pair, space and new punches "
              f"across gateways continue")
        assert lost == [] and recovered <= 10.0
        assert all(p.proc.poll() is None for p in cluster.procs)
    finally:
        if spaces is not None:
            for w in spaces:
                await w.close()
        close_all()
        cluster.stop_all()
        c.stop()


async def test_degraded_mode_while_redis_is_unreachable(tmp_path: Path) -> None:
    node = LocalRedis(free_port(), tmp_path / "redis", durable=True)
    url = f"redis://127.0.0.1:{node.port}/0"
    cluster = Cluster(url, new_prefix(), tmp_path)
    try:
        node.start()
        node.wait_up()
        flows = Flows(cluster, {}, tmp_path)
        g1, ports = flows.gateways[0], flows.ports
        peers = [Peer("127.0.0.1", ports[0], f"dg{i:04d}", src_ip=_src(2000 + i))
                 for i in range(20)]
        for p in peers:
            p.register()
        pair = flows.relay_pair("rldegraded", _src(2100))
        assert _status(g1, "/readyz") == 200 and _status(g1, "/livez") == 200
        assert node.proc is not None
        rss_before = rss_bytes(g1.proc.pid)
        node.proc.send_signal(signal.SIGSTOP)  # requests go unanswered, as with a lost host
        stopped = time.monotonic()
        not_ready = heartbeats = checks = false_ok = punches = late_checks = 0
        while time.monotonic() - stopped < 30:
            assert _status(g1, "/livez") == 200
            if _status(g1, "/readyz") == 503:
                not_ready += 1
            p = peers[checks % len(peers)]
            checks += 1
            if p.heartbeat() is not None:
                heartbeats += 1
            exchange(*pair, b"during the outage %d" % checks)
            # A punch between two peers this gateway knows is still tried.
            a = TcpClient("127.0.0.1", ports[0], src_ip=_src(2200))
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=p.id, licence_key=flows.pub,
                                                              version="1.4.9")))
            if time.monotonic() - stopped > 7:
                late_checks += 1  # past the first heartbeat that timed out
                if p.recv_udp(("punch_hole",), timeout=1.0) is not None:
                    punches += 1
            a.close()
            fresh = Peer("127.0.0.1", ports[0], f"dn{checks:04d}", src_ip=_src(checks))
            fresh.send_udp(pb.RendezvousMessage(register_pk=pb.RegisterPk(
                id=fresh.id, uuid=fresh.uuid, pk=fresh.pk)))
            r = fresh.recv_udp(("register_pk_response",), timeout=1.0)
            if r is not None and r.register_pk_response.result == OK:
                false_ok += 1
            fresh.close()
            time.sleep(0.3)
        rss_growth = rss_bytes(g1.proc.pid) - rss_before
        node.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        while _status(g1, "/readyz") != 200 and time.monotonic() - resumed < 15:
            time.sleep(0.1)
        ready_after = time.monotonic() - resumed
        late = Peer("127.0.0.1", ports[0], "dglate01", src_ip=_src(3000))
        ok_after = late.register_pk() == OK
        flows.relay_pair("rlrecovered", _src(2101))
        print(f"\ndegraded 30s: {checks} checks, readyz 503 in {not_ready}, known heartbeats "
              f"answered {heartbeats}, punches between known peers {punches}/{late_checks}, relay "
              f"pair kept "
              f"flowing, false OK {false_ok}, ready again after {ready_after:.2f}s, "
              f"registration after: {ok_after}, gateway RSS growth {rss_growth >> 10} KiB")
        assert not_ready >= checks - 4  # readyz turns 503 within one presence TTL
        # Punches are tried at once from when the heartbeat finds Redis gone (one socket
        # timeout in).
        assert heartbeats == checks and punches == late_checks > 0
        assert false_ok == 0
        assert ready_after < 10 and ok_after
        assert rss_growth < 16 << 20  # nothing piles up while Redis is away
        assert all(p.proc.poll() is None for p in cluster.procs)
    finally:
        close_all()
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)
        cluster.stop_all()
        node.stop()
