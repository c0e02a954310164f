"""The ID server's rules, sans-I/O: a message, its source and ``now`` in; answers and effects out.

Nothing here awaits, opens a socket or reads a clock. What needs Redis or another process
comes out as an effect (``LookupHeartbeat``, ``Register``, ``FindTarget``, ``Push`` ...); the
adapter (``gateway.rendezvous.service``) runs it and feeds the result back through the matching
method (``heartbeat_looked_up``, ``registered``, ``punch_target`` ...). A plain ``bytes`` effect
is an answer to the source of the input. Timers: ``get_timer()`` / ``handle_timer(now)``.

The state is composed of small parts, each behind a narrow interface: the peer table
(``PeerTable``), the rate limits, the relay choice (``RelayChoice``) and the punch log.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.rendezvous import metrics
from gateway.rendezvous.limits import IpLimiter
from gateway.rendezvous.logic import (
    Network,
    RelayChoice,
    is_lan,
    online_bitmap,
    plan_punch,
    valid_custom_id,
    valid_register_id,
)
from gateway.rendezvous.peers import LIVE_REFRESH, LocalPeer, PeerTable
from gateway.rendezvous.records import MODE_UDP, Live, PeerRecord
from hubbub.limits import BoundedMap, WindowLimit
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.fastpath import register_peer as fast_register_peer
from hubbub.wire.rustdesk.messages import message, parse, pb


__all__ = [
    "Effect",
    "FindTarget",
    "HoleSent",
    "LookupHeartbeat",
    "Push",
    "Register",
    "RendezvousCore",
    "Rules",
]

Result = pb.RegisterPkResponse

MAX_PEERS = 500_000
"""Peers remembered per process (LRU); beyond this the oldest must re-register their key."""
PEER_TTL = 90.0
MAX_LOOKUPS = 256
"""Concurrent Redis look-ups for heartbeats of peers this process does not know yet."""
MAX_REGISTRATIONS = 512
MAX_HOLES_SENT = 256
"""UDP PunchHoleSent being handled at once (each may wait for Redis); more are refused."""
KEEP_ALIVE = 60
"""Seconds announced to TCP/WS-registered clients; they give up after 1.5x without traffic."""
MAX_ONLINE_QUERY = 4096
NAT_PROBE_WINDOW = 10.0
NAT_PROBES_PER_WINDOW = 40
"""UDP NAT probes answered per source IP per window (a client bursts ~10 at start-up)."""
PUNCH_LOG = 1000
FLUSH_EVERY = 1.0
FLUSH_COALESCE = 0.005
SWEEP_EVERY = 1.0

RESP_KNOWN = message(register_peer_response=pb.RegisterPeerResponse(request_pk=False))
RESP_REQUEST_PK = message(register_peer_response=pb.RegisterPeerResponse(request_pk=True))
UDP_TYPES = ("register_peer", "register_pk", "test_nat_request", "punch_hole_sent")
_DATAGRAM_COUNTERS = {k: metrics.DATAGRAMS.labels(k) for k in UDP_TYPES}
_HEARTBEAT_DATAGRAMS = _DATAGRAM_COUNTERS["register_peer"]
_HEARTBEATS = metrics.HEARTBEATS


def reg_response(result: int, keep_alive: int = 0) -> bytes:
    return message(register_pk_response=pb.RegisterPkResponse(
        result=result, keep_alive=keep_alive))  # type: ignore[arg-type]


def punch_failure(failure: int, text: str = "") -> bytes:
    return message(punch_hole_response=pb.PunchHoleResponse(
        failure=failure, other_failure=text))  # type: ignore[arg-type]


def loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def a_key(mangled: bytes) -> str | None:
    """A's address key (``ip:port``) from the mangled address a message carries back."""
    ip, port = addrmangle.decode(mangled)
    if port == 0 and ip in ("0.0.0.0", "::"):
        return None
    return f"{ip}:{port}"


# ----------------------------------------------------------------- effects
@dataclass(frozen=True, slots=True)
class LookupHeartbeat:
    """Read ``peer_id``'s binding, then call ``heartbeat_looked_up``."""

    peer_id: str
    ip: str
    port: int
    update: bool  # follow the answer with the legacy ConfigUpdate
    src: object = None  # the source address as the socket gave it


@dataclass(frozen=True, slots=True)
class Register:
    """Bind ``peer_id`` to (uuid, pk) in Redis, then call ``registered``; ``limited``: the ID is
    over its rate, so only read the binding and call ``limited_result``."""

    peer_id: str
    uuid: bytes
    pk: bytes
    ip: str
    port: int
    mode: int
    transport: str
    limited: bool = False


@dataclass(frozen=True, slots=True)
class HoleSent:
    """B's answer to a punch, arrived over UDP: build it (``hole_sent_answer``) and deliver."""

    msg: pb.PunchHoleSent
    b_addr: tuple[str, int]


@dataclass(frozen=True, slots=True)
class FindTarget:
    """Read B's binding and liveness (recording A's sink), then call ``punch_target``."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Push:
    """Send ``data`` to B from the socket its registrations reach (maybe via another gateway)."""

    peer_id: str
    live: Live
    data: bytes
    outcome: str  # the punch outcome counted once it went out


Effect = bytes | LookupHeartbeat | Register | HoleSent


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings the rules read (from ``Config`` and the key)."""

    serial: int = 0
    rendezvous_servers: tuple[str, ...] = ()
    network: Network | None = None
    local_ip: str = ""
    licence: str = ""
    token: str = ""  # this process's owner token in liveness records
    udp_port: int = 21116


class RendezvousCore:
    """hbbs's rules for one gateway process."""

    def __init__(self, rules: Rules, relays: RelayChoice | None = None) -> None:
        self.rules = rules
        self.relays = relays if relays is not None else RelayChoice()
        self.peers = PeerTable(MAX_PEERS, PEER_TTL)
        self.ip_limiter = IpLimiter()
        # hbbs: at most 3 RegisterPk per ID within 6 s.
        self.id_limiter: WindowLimit[str] = WindowLimit(3, 6.0, max_keys=200_000)
        self.change_limiter: WindowLimit[str] = WindowLimit(3, 600.0, max_keys=50_000)
        self.nat_probes: WindowLimit[str] = WindowLimit(NAT_PROBES_PER_WINDOW, NAT_PROBE_WINDOW,
                                                        max_keys=100_000)
        self.punch_log: deque[str] = deque(maxlen=PUNCH_LOG)
        self.punch_seen: BoundedMap[str, bool] = BoundedMap(50_000, 60.0)
        self.lookups: set[str] = set()
        self.registering = 0
        self.holes_sent = 0
        self._flushed_at = 0.0
        self._swept_at = 0.0
        self._known = (RESP_KNOWN,)
        self._request_pk = (RESP_REQUEST_PK,)
        cu = message(configure_update=self.config_update())
        self._known_cu = (RESP_KNOWN, cu)
        self._request_pk_cu = (RESP_REQUEST_PK, cu)

    def config_update(self) -> pb.ConfigUpdate:
        """The legacy ConfigUpdate hbbs sends to clients with an older ``serial``."""
        return pb.ConfigUpdate(serial=self.rules.serial,
                               rendezvous_servers=list(self.rules.rendezvous_servers))

    # ------------------------------------------------------------------ UDP
    def heartbeat_fast(self, data: bytes, src: object, now: float) -> bytes | None:
        """The common datagram in one step: a heartbeat of a peer heard here before from the
        very same source address (``src``, as the socket gave it) that needs no ConfigUpdate.
        Returns its answer; None means nothing was done: take ``datagram``."""
        fast = fast_register_peer(data)
        if fast is None:
            return None
        peer_id, serial = fast
        peer = self.peers.entries.get(peer_id)
        if (peer is None or peer.src != src or now - peer.seen > PEER_TTL
                or serial < self.rules.serial):
            return None
        peer.seen = now
        if now - peer.flushed >= LIVE_REFRESH:
            self.peers.dirty[peer_id] = peer
        _HEARTBEAT_DATAGRAMS.value += 1
        _HEARTBEATS.value += 1
        return RESP_KNOWN

    def datagram(self, data: bytes, ip: str, port: int, now: float,
                 src: object = None) -> Sequence[Effect]:
        """One datagram from ``ip:port`` (``src``: the address as the socket gave it);
        ``bytes`` effects are answers to that source."""
        fast = fast_register_peer(data)
        if fast is not None:
            _HEARTBEAT_DATAGRAMS.value += 1
            return self.heartbeat(fast[0], fast[1], ip, port, now, src)
        msg = parse(data)
        if msg is None:
            metrics.DROPPED.labels("bad_datagram").inc()
            return ()
        kind = msg.WhichOneof("union")
        counter = _DATAGRAM_COUNTERS.get(kind or "")
        if counter is None:
            metrics.DROPPED.labels("udp_type").inc()
            return ()
        counter.inc()
        if kind == "register_peer":
            return self.heartbeat(msg.register_peer.id, msg.register_peer.serial, ip, port, now,
                                  src)
        if kind == "register_pk":
            if self.registering >= MAX_REGISTRATIONS:
                metrics.DROPPED.labels("busy").inc()
                return ()
            effect = self.register_pk(msg.register_pk, ip, port, MODE_UDP, "udp", now)
            if isinstance(effect, Register):
                self.registering += 1
                return (effect,)
            return () if effect is None else (reg_response(effect),)
        if kind == "test_nat_request":
            # Answered to the datagram's own source; rate-limited per IP so spoofed sources
            # cannot turn the server into a steady reflector.
            if not self.nat_probes.allow(ip, now):
                metrics.DROPPED.labels("nat_probe_rate").inc()
                return ()
            return (message(test_nat_response=pb.TestNatResponse(port=port)),)
        # UDP hole punching: B's observed UDP endpoint goes to A's TCP connection only. Anyone
        # can send these (B repeats each one 3 times) and each may wait for Redis: past the
        # bound they are refused rather than queued.
        if self.holes_sent >= MAX_HOLES_SENT:
            metrics.DROPPED.labels("punch_sent_busy").inc()
            return ()
        self.holes_sent += 1
        return (HoleSent(msg.punch_hole_sent, (ip, port)),)

    def heartbeat(self, peer_id: str, serial: int, ip: str, port: int, now: float,
                  src: object = None) -> Sequence[Effect]:
        """RegisterPeer: answered from the local table; an unknown peer is looked up once."""
        if not peer_id or len(peer_id) > 64:
            return ()
        # hbbs follows every answer with the legacy ConfigUpdate when its serial is newer.
        update = self.rules.serial > serial
        peer = self.peers.get(peer_id, now)
        if peer is None:
            if peer_id in self.lookups:
                return ()
            if len(self.lookups) >= MAX_LOOKUPS:
                return self._request_pk_cu if update else self._request_pk
            self.lookups.add(peer_id)
            return (LookupHeartbeat(peer_id, ip, port, update, src),)
        if peer.ip != ip and not loopback(ip):
            self.peers.note_ip_change(peer_id, peer.ip, ip, now)
            return self._request_pk_cu if update else self._request_pk
        self.peers.heard(peer_id, peer, ip, port, MODE_UDP, now, src)
        _HEARTBEATS.value += 1
        return self._known_cu if update else self._known

    def heartbeat_looked_up(self, effect: LookupHeartbeat, rec: PeerRecord | None,
                            now: float) -> Sequence[bytes]:
        """The binding read for ``effect`` (None: unbound, or Redis away)."""
        self.lookups.discard(effect.peer_id)
        ip = effect.ip
        if rec is None or not rec.pk or (rec.ip != ip and not loopback(ip)):
            return self._request_pk_cu if effect.update else self._request_pk
        self.peers.verified(effect.peer_id, ip, effect.port, MODE_UDP, rec.ip, rec.gen, now,
                            src=effect.src)
        _HEARTBEATS.value += 1
        return self._known_cu if effect.update else self._known

    # ------------------------------------------------------------ RegisterPk
    def register_pk(self, rpk: pb.RegisterPk, ip: str, port: int, mode: int, transport: str,
                    now: float) -> Register | int | None:
        """hbbs's RegisterPk rules up to the store: a result, a ``Register`` to run, or None
        (drop silently)."""
        if not rpk.uuid or not rpk.pk:
            return None
        peer_id = rpk.id
        if not valid_register_id(peer_id):
            return self._counted(transport, Result.INVALID_ID_FORMAT)
        if not self.ip_limiter.allow(ip, peer_id, now):
            return self._counted(transport, Result.TOO_FREQUENT)
        # hbbs checks the uuid binding before the per-ID limit, and requests from another
        # machine do not count: a device squatting on an ID cannot lock its owner out.
        limited = self.id_limiter.blocked(peer_id, now)
        return Register(peer_id, bytes(rpk.uuid), bytes(rpk.pk), ip, port, mode, transport,
                        limited)

    def registered(self, reg: Register, mismatch: bool | None, gen: bytes, now: float) -> int:
        """The store's answer to ``reg`` (None: Redis away)."""
        if mismatch is None:
            result = Result.SERVER_ERROR
        elif mismatch:
            result = Result.UUID_MISMATCH
        else:
            self.id_limiter.allow(reg.peer_id, now)
            result = Result.OK
            self.peers.verified(reg.peer_id, reg.ip, reg.port, reg.mode, reg.ip, gen, now,
                                flushed=True)
        return self._counted(reg.transport, result)

    def limited_result(self, reg: Register, rec: PeerRecord | None, available: bool) -> int:
        """The answer for an ID over its RegisterPk rate: UUID_MISMATCH wins, as in hbbs."""
        if not available:
            result = Result.SERVER_ERROR
        elif rec is not None and (rec.uuid != reg.uuid or (rec.ip != reg.ip and rec.pk != reg.pk)):
            result = Result.UUID_MISMATCH
        else:
            result = Result.TOO_FREQUENT
        return self._counted(reg.transport, result)

    @staticmethod
    def _counted(transport: str, result: int) -> int:
        metrics.REGISTRATIONS.labels(transport, Result.Result.Name(result)).inc()
        return int(result)

    def change_id_check(self, rpk: pb.RegisterPk, ip: str, now: float) -> int | None:
        """Change ID up to the store: a refusal, or None to go ahead."""
        if not valid_custom_id(rpk.id):
            result = Result.INVALID_ID_FORMAT
        elif not rpk.uuid:
            result = Result.UUID_MISMATCH
        elif (not self.change_limiter.allow(rpk.uuid.hex(), now)
              or not self.ip_limiter.allow(ip, rpk.id, now)):
            result = Result.TOO_FREQUENT
        else:
            return None
        return self._counted("change_id", result)

    # ---------------------------------------------------------------- punch
    def punch_request(self, req: pb.PunchHoleRequest) -> bytes | FindTarget:
        """A's PunchHoleRequest: a refusal, or find B."""
        if not self._licence_ok(req.licence_key):
            metrics.PUNCH_REQUESTS.labels("license_mismatch").inc()
            return punch_failure(pb.PunchHoleResponse.LICENSE_MISMATCH)
        if not valid_register_id(req.id):
            metrics.PUNCH_REQUESTS.labels("id_not_exist").inc()
            return punch_failure(pb.PunchHoleResponse.ID_NOT_EXIST)
        return FindTarget(req.id)

    def _licence_ok(self, key: str) -> bool:
        return not self.rules.licence or key == self.rules.licence

    def local_live(self, peer_id: str, now: float) -> Live | None:
        peer = self.peers.get(peer_id, now)
        return None if peer is None else peer.live(self.rules.token, self.rules.udp_port)

    def target(self, peer_id: str, rec: PeerRecord | None, live: Live | None,
               now: float) -> tuple[bool, Live | None]:
        """(exists, freshest liveness) of B from the read made for this request.

        What this process heard of B counts only if it was heard under the binding that very
        read returns (bindings.py): a removed, moved or re-keyed ID is never served from here.
        """
        self.peers.drop(peer_id, None if rec is None else rec.gen)  # no-op when current
        if rec is None:
            return False, None
        self.peers.bindings.put(peer_id, rec.gen, rec.pk, now)
        local = self.peers.get(peer_id, now)
        if local is not None and (live is None or local.seen >= live.seen):
            live = local.live(self.rules.token, self.rules.udp_port)
        return True, live

    def punch_target(self, req: pb.PunchHoleRequest, a: tuple[str, int], websocket: bool,
                     exists: bool, live: Live | None, now: float) -> bytes | Push:
        """What A's request becomes once B is found: a refusal to A, or a push to B."""
        if not exists and live is None:
            metrics.PUNCH_REQUESTS.labels("id_not_exist").inc()
            return punch_failure(pb.PunchHoleResponse.ID_NOT_EXIST)
        if live is None or not live.online(now):
            metrics.PUNCH_REQUESTS.labels("offline").inc()
            return punch_failure(pb.PunchHoleResponse.OFFLINE)
        a_ip, a_port = a
        self._log_punch(a_ip, req.id, live.ip, now)
        plan = plan_punch(a_ip, live.ip, websocket=websocket,
                          always_relay=self.relays.always_relay, network=self.rules.network,
                          local_ip=self.rules.local_ip, relay_server=self.relays.pick())
        mangled = addrmangle.encode(a_ip, a_port, int(now * 1_000_000))
        if plan.fetch_local:
            return Push(req.id, live, message(fetch_local_addr=pb.FetchLocalAddr(
                socket_addr=mangled, relay_server=plan.relay_server,
                socket_addr_v6=req.socket_addr_v6)), "fetch_local_addr")
        return Push(req.id, live, message(punch_hole=pb.PunchHole(
            socket_addr=mangled, relay_server=plan.relay_server,
            nat_type=pb.SYMMETRIC if plan.force_symmetric else req.nat_type,
            udp_port=req.udp_port, force_relay=req.force_relay, upnp_port=req.upnp_port,
            socket_addr_v6=req.socket_addr_v6)), "punch_hole")

    @staticmethod
    def relay_request_valid(rr: pb.RequestRelay) -> bool:
        """Whether A's RequestRelay names an ID worth looking up."""
        return valid_register_id(rr.id)

    def relay_target(self, msg: pb.RendezvousMessage, a: tuple[str, int], live: Live | None,
                     now: float) -> bytes | Push:
        """A's RequestRelay once B is looked up: a refusal to A, or the request pushed to B."""
        rr = msg.request_relay
        if live is None or not live.online(now):
            metrics.PUNCH_REQUESTS.labels("relay_offline").inc()
            return message(relay_response=pb.RelayResponse(
                uuid=rr.uuid, refuse_reason="Remote desktop is offline"))
        rr.socket_addr = addrmangle.encode(a[0], a[1], int(now * 1_000_000))
        return Push(rr.id, live, msg.SerializeToString(), "request_relay")

    def _log_punch(self, a_ip: str, peer_id: str, b_ip: str, now: float) -> None:
        key = f"{a_ip}|{peer_id}"
        if self.punch_seen.get(key, now):
            return
        self.punch_seen.put(key, True, now)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self.punch_log.append(f"{stamp} {a_ip} -> {peer_id}@{b_ip}")

    # --------------------------------------------------------- B's answers
    @staticmethod
    def hole_sent_answer(ps: pb.PunchHoleSent, b_addr: tuple[str, int], pk: bytes, udp: bool,
                         now: float) -> bytes:
        resp = pb.PunchHoleResponse(
            socket_addr=addrmangle.encode(b_addr[0], b_addr[1], int(now * 1_000_000)),
            pk=pk, relay_server=ps.relay_server, nat_type=ps.nat_type, upnp_port=ps.upnp_port,
            socket_addr_v6=ps.socket_addr_v6, is_udp=udp)
        return message(punch_hole_response=resp)

    @staticmethod
    def local_addr_answer(la: pb.LocalAddr, pk: bytes) -> bytes:
        return message(punch_hole_response=pb.PunchHoleResponse(
            socket_addr=la.local_addr, pk=pk, relay_server=la.relay_server, is_local=True,
            socket_addr_v6=la.socket_addr_v6))

    def relay_answer(self, msg: pb.RendezvousMessage, a_ip: str, pk: bytes) -> bytes:
        """B's RelayResponse as A gets it (A's address removed, B's signed key added)."""
        rr = msg.relay_response
        rr.socket_addr = b""
        if rr.WhichOneof("union") == "id":
            rr.pk = pk
        local_ip = self.rules.local_ip
        if rr.relay_server and local_ip:
            if is_lan(a_ip, self.rules.network):
                rr.relay_server = local_ip
            elif rr.relay_server == local_ip:
                rr.relay_server = self.relays.pick()
        return msg.SerializeToString()

    # --------------------------------------------------------------- online
    @staticmethod
    def online_ids(req: pb.OnlineRequest) -> tuple[list[str], int]:
        """The IDs worth reading (invalid ones as ""), and how many were asked."""
        ids = list(req.peers)
        return [i if valid_register_id(i) else "" for i in ids[:MAX_ONLINE_QUERY]], len(ids)

    @staticmethod
    def online_answer(lives: Sequence[Live | None], asked: int, now: float) -> bytes:
        flags = [live is not None and live.online(now) for live in lives]
        flags += [False] * (asked - len(lives))
        return message(online_response=pb.OnlineResponse(states=online_bitmap(flags)))

    # ---------------------------------------------------------- admin view
    def ip_changes(self) -> Iterator[tuple[str, dict[str, int]]]:
        return self.peers.ip_changes.items()

    def forget(self, peer_id: str) -> None:
        self.peers.forget(peer_id)

    # --------------------------------------------------------------- timers
    def get_timer(self) -> float:
        """When ``handle_timer`` is next due (an urgent flush is due at once)."""
        flush = self._flushed_at + (FLUSH_COALESCE if self.peers.urgent else FLUSH_EVERY)
        return min(flush, self._swept_at + SWEEP_EVERY)

    def handle_timer(self, now: float) -> dict[str, LocalPeer] | None:
        """Sweep when due; returns the liveness batch to flush when one is due (the adapter
        reports back with ``peers.flushed`` or ``peers.restore``)."""
        if now >= self._swept_at + SWEEP_EVERY:
            self._swept_at = now
            self.peers.sweep(now)
            metrics.ONLINE_PEERS.set(self.peers.online)
            for m in (self.punch_seen, self.ip_limiter.map):
                m.sweep(now)
            for w in (self.nat_probes, self.id_limiter, self.change_limiter):
                w.sweep(now)
        due = self._flushed_at + (FLUSH_COALESCE if self.peers.urgent else FLUSH_EVERY)
        if now < due:
            return None
        self._flushed_at = now
        if not self.peers.dirty:
            return None
        return self.peers.take_dirty()
