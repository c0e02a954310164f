"""The ID server's rules without Redis, sockets or a clock: bytes and ``now`` in, effects out.

``Harness`` plays the adapters of two gateways around two cores: a dict stands in for the
Redis keys and the effects are routed between the cores the way ``service`` and ``routing``
route them, so whole flows (register, heartbeat, punch across gateways, answer) run in
microseconds and deterministically.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from support import ROOT, io_imports

from gateway.rendezvous.core import (
    MAX_LOOKUPS,
    RESP_KNOWN,
    RESP_REQUEST_PK,
    FindTarget,
    HoleSent,
    LookupHeartbeat,
    Push,
    Register,
    RendezvousCore,
    Rules,
    a_key,
)
from gateway.rendezvous.logic import RelayChoice, parse_mask
from gateway.rendezvous.peers import BINDING_TTL, PeerTable
from gateway.rendezvous.records import MODE_UDP, Live, PeerRecord, binding_gen
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.messages import message, parse, pb


R = pb.RegisterPkResponse
T0 = 1_700_000_000.0


def heartbeat(peer_id: str, serial: int = 0) -> bytes:
    return message(register_peer=pb.RegisterPeer(id=peer_id, serial=serial))


def failure(data: bytes | None) -> int:
    assert data is not None
    msg = parse(data)
    assert msg is not None
    return int(msg.punch_hole_response.failure)


def answer_kind(data: bytes) -> str:
    msg = parse(data)
    assert msg is not None
    return msg.WhichOneof("union") or ""


@dataclass
class Gateway:
    core: RendezvousCore
    udp_out: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)


class Harness:
    """Two gateways' cores over one dict-backed store (binding, liveness per ID)."""

    def __init__(self, **rules: object) -> None:
        self.bindings: dict[str, PeerRecord] = {}
        self.lives: dict[str, Live] = {}
        self.gw = [Gateway(RendezvousCore(Rules(token=f"tok{i}", udp_port=21116 + i,
                                                **rules)))  # type: ignore[arg-type]
                   for i in range(2)]
        self.held: dict[str, int] = {}  # A's address key -> gateway holding A

    # -- what the adapter does with each effect
    def datagram(self, g: int, data: bytes, src: tuple[str, int], now: float) -> list[bytes]:
        core = self.gw[g].core
        out: list[bytes] = []
        for effect in core.datagram(data, src[0], src[1], now, src):
            if isinstance(effect, bytes):
                out.append(effect)
            elif isinstance(effect, LookupHeartbeat):
                out += core.heartbeat_looked_up(effect, self.bindings.get(effect.peer_id), now)
            elif isinstance(effect, Register):
                core.registering -= 1
                out.append(message(register_pk_response=pb.RegisterPkResponse(
                    result=self.register(g, effect, now))))  # type: ignore[arg-type]
            elif isinstance(effect, HoleSent):
                core.holes_sent -= 1
                self.answer(g, effect, now)
        return out

    def register(self, g: int, reg: Register, now: float) -> int:
        core = self.gw[g].core
        if reg.limited:
            return core.limited_result(reg, self.bindings.get(reg.peer_id), True)
        cur = self.bindings.get(reg.peer_id)
        if cur is not None and (cur.uuid != reg.uuid or (cur.ip != reg.ip and cur.pk != reg.pk)):
            return core.registered(reg, True, b"", now)
        gen = binding_gen(reg.uuid, reg.pk, reg.ip.encode())
        self.bindings[reg.peer_id] = PeerRecord(reg.uuid, reg.pk, reg.ip, gen)
        self.lives[reg.peer_id] = Live(reg.ip, reg.port, now, f"tok{g}", 21116 + g, reg.mode)
        return core.registered(reg, False, gen, now)

    def flush(self, g: int, now: float) -> None:
        core = self.gw[g].core
        batch = core.handle_timer(now) or {}
        refused = [pid for pid, p in batch.items()
                   if pid not in self.bindings or self.bindings[pid].gen != p.gen]
        for pid, p in batch.items():
            if pid not in refused:
                self.lives[pid] = p.live(f"tok{g}", 21116 + g)
        core.peers.flushed(batch, refused, now)

    def punch(self, g: int, a: tuple[str, int], req: pb.PunchHoleRequest,
              now: float) -> bytes | None:
        """A's request on gateway ``g``: the refusal A gets, or None when B was pushed to."""
        core = self.gw[g].core
        step = core.punch_request(req)
        if isinstance(step, bytes):
            return step
        assert isinstance(step, FindTarget)
        exists, live = core.target(step.peer_id, self.bindings.get(step.peer_id),
                                   self.lives.get(step.peer_id), now)
        out = core.punch_target(req, a, False, exists, live, now)
        if isinstance(out, bytes):
            return out
        assert isinstance(out, Push)
        owner = int(out.live.owner[-1])
        self.held[f"{a[0]}:{a[1]}"] = g
        # The push leaves from the gateway B talks to (a different port: via its inbox).
        self.gw[owner].udp_out.append((out.data, (out.live.ip, out.live.port)))
        return None

    def answer(self, g: int, effect: HoleSent, now: float) -> None:
        core = self.gw[g].core
        target = a_key(effect.msg.socket_addr)
        assert target is not None
        rec = self.bindings.get(effect.msg.id)
        answer = core.hole_sent_answer(effect.msg, effect.b_addr, rec.pk if rec else b"", True,
                                       now)
        self.gw[self.held.pop(target)].udp_out.append((answer, ("A", 0)))


def test_heartbeats_known_unknown_moved() -> None:
    h = Harness()
    b = ("203.0.113.5", 40000)
    # Unknown ID: looked up once; unbound -> asked for its key.
    assert [answer_kind(d) for d in h.datagram(0, heartbeat("123456789"), b, T0)] == [
        "register_peer_response"]
    assert h.datagram(0, heartbeat("123456789"), b, T0) == [RESP_REQUEST_PK]
    reg = pb.RegisterPk(id="123456789", uuid=b"dev", pk=b"k" * 32)
    [ok] = h.datagram(0, message(register_pk=reg), b, T0)
    assert parse(ok).register_pk_response.result == R.OK  # type: ignore[union-attr]
    # Known: answered; from then on the same source takes the fast path, without effects.
    core = h.gw[0].core
    assert h.datagram(0, heartbeat("123456789"), b, T0) == [RESP_KNOWN]
    assert core.heartbeat_fast(heartbeat("123456789"), b, T0 + 1) == RESP_KNOWN
    assert core.heartbeat_fast(heartbeat("123456789"), ("203.0.113.5", 40001), T0 + 1) is None
    # Another port of the same IP: the general path takes it and marks it for a flush now.
    assert h.datagram(0, heartbeat("123456789"), ("203.0.113.5", 40001), T0 + 2) == [RESP_KNOWN]
    assert core.peers.urgent and "123456789" in core.peers.dirty
    # Another IP: the key is asked for again, and the change remembered for the admin.
    assert h.datagram(0, heartbeat("123456789"), ("198.51.100.1", 5), T0 + 3) == [
        RESP_REQUEST_PK]
    assert dict(core.ip_changes())["123456789"] == {"203.0.113.5": 1, "198.51.100.1": 1}
    # Another gateway knows nothing yet: one look-up, then the fast path.
    other = h.gw[1].core
    assert h.datagram(1, heartbeat("123456789"), b, T0 + 4) == [RESP_KNOWN]
    assert other.heartbeat_fast(heartbeat("123456789"), b, T0 + 5) == RESP_KNOWN


def test_heartbeat_limits_and_config_update() -> None:
    h = Harness(serial=5, rendezvous_servers=("id.example",))
    core = h.gw[0].core
    effects = [core.datagram(heartbeat(f"{100000000 + i}"), "203.0.113.9", i, T0)
               for i in range(MAX_LOOKUPS + 3)]
    assert all(isinstance(e[0], LookupHeartbeat) for e in effects[:MAX_LOOKUPS])
    # Past the bound, no more look-ups: the key is asked for (with the ConfigUpdate).
    assert [answer_kind(d) for d in effects[-1] if isinstance(d, bytes)] == [
        "register_peer_response", "configure_update"]
    assert len(core.lookups) == MAX_LOOKUPS
    # A look-up already running for an ID: the repeat is dropped, not queued.
    assert core.datagram(heartbeat("100000000"), "203.0.113.9", 0, T0) == ()
    # A current client (serial 5) gets no ConfigUpdate; the fast path never sends one.
    h.bindings["100000000"] = PeerRecord(b"u", b"k" * 32, "203.0.113.9", b"g")
    look = effects[0][0]
    assert isinstance(look, LookupHeartbeat) and look.update
    assert [answer_kind(d) for d in core.heartbeat_looked_up(look, h.bindings["100000000"],
                                                              T0)] == [
        "register_peer_response", "configure_update"]
    assert core.heartbeat_fast(heartbeat("100000000", serial=4), look.src, T0) is None
    assert core.heartbeat_fast(heartbeat("100000000", serial=5), look.src, T0) == RESP_KNOWN


def test_register_pk_rules() -> None:
    h = Harness()
    core = h.gw[0].core
    src = ("203.0.113.7", 1)
    bad = pb.RegisterPk(id="no spaces", uuid=b"u", pk=b"k")
    assert core.register_pk(bad, *src, MODE_UDP, "udp", T0) == R.INVALID_ID_FORMAT
    assert core.register_pk(pb.RegisterPk(id="123456789"), *src, MODE_UDP, "udp", T0) is None
    results = []
    for i in range(5):
        step = core.register_pk(pb.RegisterPk(id="123456789", uuid=b"u", pk=b"k"), *src,
                                MODE_UDP, "udp", T0 + i * 0.1)
        assert isinstance(step, Register)
        results.append(h.register(0, step, T0 + i * 0.1))
    # hbbs: three per ID within 6 s, then TOO_FREQUENT for the same device ...
    assert results == [R.OK, R.OK, R.OK, R.TOO_FREQUENT, R.TOO_FREQUENT]
    # ... but another device claiming the ID is told UUID_MISMATCH, over the limit or not.
    step = core.register_pk(pb.RegisterPk(id="123456789", uuid=b"other", pk=b"q"), *src,
                            MODE_UDP, "udp", T0 + 1)
    assert isinstance(step, Register) and step.limited
    assert h.register(0, step, T0 + 1) == R.UUID_MISMATCH
    assert core.limited_result(step, None, False) == R.SERVER_ERROR


def test_punch_across_two_gateways_and_the_answer_back() -> None:
    h = Harness()
    b = ("198.51.100.20", 41000)
    a = ("203.0.113.30", 50000)
    reg = pb.RegisterPk(id="777000111", uuid=b"dev-b", pk=b"p" * 32)
    h.datagram(1, message(register_pk=reg), b, T0)  # B talks to gateway 1
    req = pb.PunchHoleRequest(id="777000111", nat_type=pb.ASYMMETRIC, udp_port=0)
    assert h.punch(0, a, req, T0 + 1) is None  # A asks gateway 0: pushed through gateway 1
    [(data, to)] = h.gw[1].udp_out
    assert to == b and answer_kind(data) == "punch_hole"
    ph = parse(data).punch_hole  # type: ignore[union-attr]
    assert addrmangle.decode(ph.socket_addr) == a and ph.nat_type == pb.ASYMMETRIC
    # The look-up that found B remembered B's key for the answer (and only for a while).
    gen = h.bindings["777000111"].gen
    assert h.gw[0].core.peers.bindings.get("777000111", T0 + 1) == (gen, b"p" * 32)
    assert h.gw[0].core.peers.bindings.get("777000111", T0 + 2 + BINDING_TTL) is None
    # B answers over UDP to gateway 1; the answer reaches A on gateway 0.
    sent = pb.PunchHoleSent(socket_addr=ph.socket_addr, id="777000111", version="1.4.9")
    assert h.datagram(1, message(punch_hole_sent=sent), b, T0 + 1.1) == []
    [(resp, _)] = h.gw[0].udp_out
    phr = parse(resp).punch_hole_response  # type: ignore[union-attr]
    assert addrmangle.decode(phr.socket_addr) == b and phr.is_udp and phr.pk == b"p" * 32


def test_punch_refusals() -> None:
    h = Harness(licence="secret")
    a = ("203.0.113.30", 50000)
    refusal = h.punch(0, a, pb.PunchHoleRequest(id="777000111", licence_key="nope"), T0)
    assert failure(refusal) == pb.PunchHoleResponse.LICENSE_MISMATCH
    for peer_id in ("bad id!", "777000111"):  # malformed; well formed but never bound
        out = h.punch(0, a, pb.PunchHoleRequest(id=peer_id, licence_key="secret"), T0)
        assert failure(out) == pb.PunchHoleResponse.ID_NOT_EXIST
    # Bound but silent for longer than the online window: OFFLINE.
    h.bindings["777000111"] = PeerRecord(b"u", b"k" * 32, "198.51.100.2", b"g")
    h.lives["777000111"] = Live("198.51.100.2", 1, T0 - 60, "tok1", 21117, MODE_UDP)
    out = h.punch(0, a, pb.PunchHoleRequest(id="777000111", licence_key="secret"), T0)
    assert failure(out) == pb.PunchHoleResponse.OFFLINE


def test_lan_and_forced_relay_plans() -> None:
    relays = RelayChoice(("relay.example:21117",))
    core = RendezvousCore(Rules(network=parse_mask("192.168.0.0/16"), local_ip="192.168.1.1",
                                token="t"), relays)
    live = Live("192.168.7.7", 1, T0, "t", 21116, MODE_UDP)
    req = pb.PunchHoleRequest(id="777000111")
    lan = core.punch_target(req, ("192.168.5.5", 9), False, True, live, T0)
    assert isinstance(lan, Push) and answer_kind(lan.data) == "fetch_local_addr"
    # A outside the LAN, B inside: relayed, through the relay's LAN address.
    out = core.punch_target(req, ("203.0.113.1", 9), False, True, live, T0)
    assert isinstance(out, Push)
    ph = parse(out.data).punch_hole  # type: ignore[union-attr]
    assert ph.nat_type == pb.SYMMETRIC and ph.relay_server == "192.168.1.1"
    relays.apply({"always_use_relay": "Y"})
    out = core.punch_target(req, ("192.168.5.5", 9), False, True, live, T0)
    assert isinstance(out, Push) and answer_kind(out.data) == "punch_hole"


def test_flush_timer_and_refused_entries() -> None:
    h = Harness()
    core = h.gw[0].core
    b = ("198.51.100.3", 4000)
    h.datagram(0, message(register_pk=pb.RegisterPk(id="555000111", uuid=b"u", pk=b"k" * 8)),
               b, T0)
    assert core.get_timer() <= T0  # nothing flushed yet: due at once
    h.datagram(0, heartbeat("555000111"), ("198.51.100.3", 4001), T0 + 0.1)  # moved: urgent
    assert core.peers.urgent
    h.flush(0, T0 + 0.1)
    assert not core.peers.dirty and h.lives["555000111"].port == 4001
    assert core.get_timer() == T0 + 0.1 + 1.0  # the next one-second batch
    # The binding went away without this gateway hearing of it: the flush refuses the entry.
    del h.bindings["555000111"]
    h.datagram(0, heartbeat("555000111"), ("198.51.100.3", 4002), T0 + 0.2)
    h.flush(0, T0 + 1.2)
    assert "555000111" not in core.peers


def test_peer_table_bounds_and_generations() -> None:
    table = PeerTable(max_peers=3, ttl=90.0)
    for i in range(5):
        table.verified(f"p{i}", "10.0.0.1", i, MODE_UDP, "10.0.0.1", b"g", T0)
    assert len(table) == 3 and "p0" not in table and "p4" in table
    assert table.get("p4", T0 + 91) is None  # expired: absent, then swept
    table.sweep(T0 + 91)
    assert len(table) == 0
    table.verified("p", "10.0.0.1", 1, MODE_UDP, "10.0.0.1", b"g1", T0)
    table.bindings.put("p", b"g1", b"key", T0)
    assert not table.drop("p", b"g1") and table.bindings.get("p", T0) == (b"g1", b"key")
    assert table.drop("p", b"g2")  # news of another generation: entry and key both go
    assert "p" not in table and table.bindings.get("p", T0) is None


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the module at ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def test_rules_are_sans_io_and_the_gateway_has_no_import_cycle() -> None:
    package = ROOT / "gateway" / "rendezvous"
    for name in ("core", "peers", "records", "logic", "limits", "bindings"):
        assert not io_imports(package / f"{name}.py"), name
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "gateway").rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}

    def in_a_cycle(start: str) -> bool:
        todo, seen = [start], set()
        while todo:
            for dep in graph[todo.pop()]:
                if dep == start:
                    return True
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return False

    assert [name for name in graph if in_a_cycle(name)] == []
