"""RustDesk clients for load tests: a controlled device and a controller, as the real client does.

Blocking sockets and gevent greenlets: under locust (which monkey-patches the standard library)
every wait is cooperative. The wire code is hubbub's own (``hubbub.wire.rustdesk``); the
behaviour and timings follow the RustDesk client:

* a device registers with ``RegisterPk`` over UDP, heartbeats ``RegisterPeer`` every 15 s (resend
  after 3 s without an answer), and answers ``PunchHole`` / ``FetchLocalAddr`` / ``RequestRelay``
  pushed over UDP on a fresh TCP connection to the rendezvous port (``PunchHoleSent`` /
  ``LocalAddr`` / ``RelayResponse``), then listens for the controller or joins the relay;
* "the list is open": an ``OnlineRequest`` on a new TCP connection to port P-1 every 6 s;
* a controller sends ``PunchHoleRequest`` (up to 3 times on one connection, waiting 3, 6, 9 s),
  then connects directly, or through the relay with ``RequestRelay{uuid}``.

Once connected, controller and device exchange a payload that the device echoes, so every
session proves the path carries bytes both ways.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent.event import AsyncResult

from hubbub.errors import LoadTestError
from hubbub.wire.rustdesk import addr as mangle
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import kind, parse, pb, serialize
from loadtest.targets import Recorder, Target, measure


__all__ = [
    "CLIENT_VERSION",
    "BaseDevice",
    "Controller",
    "Device",
    "FramedConn",
    "MessageConn",
    "NoAnswer",
    "RelayPair",
    "online_query",
    "punch",
    "relay_via_id_server",
]

CLIENT_VERSION = "1.4.9"
REG_INTERVAL = 15.0
REG_TIMEOUT = 3.0
ONLINE_TIMEOUT = 3.0
PUNCH_WAITS = (3.0, 6.0, 9.0)
RELAY_RESPONSE_WAIT = 18.0
CONNECT_TIMEOUT = 18.0
LISTEN_WAIT = 18.0
"""How long a device listens for the controller after PunchHoleSent/LocalAddr."""
SESSION_IDLE = 10.0
"""A device ends an echo session after this many idle seconds (the relay's own is 30 s)."""
MAX_SESSIONS = 64
"""Concurrent sessions per device; pushes beyond it are dropped (a busy device)."""
ECHO_LIMIT = 256 * 1024 * 1024
DUP_WINDOW = 0.1
"""A device ignores a second push naming the same controller address within 100 ms."""
RT = "rustdesk"


class NoAnswer(LoadTestError):
    """The server sent nothing within the wait (the client then resends or gives up)."""


class MessageConn(Protocol):
    """A connection carrying ``RendezvousMessage``s (framed TCP or WebSocket)."""

    def send(self, msg: pb.RendezvousMessage) -> None: ...

    def recv(self, timeout: float) -> pb.RendezvousMessage: ...


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _wildcard(family: socket.AddressFamily) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _reuse_socket(family: socket.AddressFamily) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def _recv_exact(sock: socket.socket, n: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoadTestError(f"timed out after {len(buf)} of {n} bytes")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 262144))
        if not chunk:
            raise LoadTestError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class PushFilter:
    """Drops a push repeated within ``DUP_WINDOW`` (as a real client does); bounded."""

    def __init__(self) -> None:
        self._seen: dict[bytes, float] = {}

    def admit(self, key: bytes) -> bool:
        now = time.monotonic()
        if now - self._seen.get(key, -1.0) < DUP_WINDOW:
            return False
        if len(self._seen) > 256:
            self._seen = {a: t for a, t in self._seen.items() if now - t < DUP_WINDOW}
        self._seen[key] = now
        return True


class FramedConn:
    """A TCP connection carrying BytesCodec frames of ``RendezvousMessage``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._frames: deque[bytes] = deque()

    @classmethod
    def connect(cls, addr: tuple[str, int], timeout: float = CONNECT_TIMEOUT,
                source_port: int | None = None, source_ip: str = "") -> FramedConn:
        """Connect, from ``source_ip:source_port`` when given (port reuse as the client does)."""
        if source_port is None and not source_ip:
            sock = socket.create_connection(addr, timeout=timeout)
        else:
            family = _family(addr[0])
            sock = _reuse_socket(family)
            try:
                sock.settimeout(timeout)
                sock.bind((source_ip or _wildcard(family), source_port or 0))
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, msg: pb.RendezvousMessage) -> None:
        self.sock.sendall(encode_frame(serialize(msg)))

    def recv(self, timeout: float) -> pb.RendezvousMessage:
        """The next message, skipping heartbeats and a server's opening ``KeyExchange``."""
        deadline = time.monotonic() + timeout
        while True:
            while self._frames:
                payload = self._frames.popleft()
                if not payload:
                    continue
                msg = parse(payload)
                if msg is None:
                    raise LoadTestError("undecodable frame from the server")
                if kind(msg) == "key_exchange":
                    continue
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(f"no answer within {timeout:.0f}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise LoadTestError("server closed the connection")
            self._frames.extend(self._decoder.feed(data))

    def pending(self) -> bytes:
        """Bytes already read after the last frame (raw relay data)."""
        return self._decoder.pending()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _msg(**member: object) -> pb.RendezvousMessage:
    msg = pb.RendezvousMessage()
    for name, value in member.items():
        getattr(msg, name).CopyFrom(value)
    return msg


def online_query(target: Target, my_id: str, peers: list[str], source_ip: str = "") -> bytes:
    """One online query on a new TCP connection to port P-1; returns the state bitmap.

    Raises:
        LoadTestError: no answer in 3 s, a wrong message, or a bitmap shorter than the list.
    """
    conn = FramedConn.connect((target.host, target.nat_port), timeout=ONLINE_TIMEOUT,
                              source_ip=source_ip)
    try:
        conn.send(_msg(online_request=pb.OnlineRequest(id=my_id, peers=peers)))
        reply = conn.recv(ONLINE_TIMEOUT)
    finally:
        conn.close()
    if kind(reply) != "online_response":
        raise LoadTestError(f"expected OnlineResponse, got {kind(reply) or 'nothing'}")
    states = reply.online_response.states
    if len(states) < (len(peers) + 7) // 8:
        raise LoadTestError(f"OnlineResponse bitmap of {len(states)} bytes for {len(peers)} peers")
    return bytes(states)


def online_bit(states: bytes, index: int) -> bool:
    return bool(states[index // 8] & (0x80 >> (index % 8)))


def punch(conn: MessageConn, request: pb.RendezvousMessage) -> pb.RendezvousMessage:
    """Send a ``PunchHoleRequest`` up to 3 times on one connection (waiting 3, 6, 9 s).

    Returns:
        The ``RelayResponse`` or the ``PunchHoleResponse`` carrying B's address.

    Raises:
        LoadTestError: refused, no answer to any try, or an unexpected message.
    """
    for wait in PUNCH_WAITS:
        conn.send(request)
        try:
            reply = conn.recv(wait)
        except NoAnswer:
            continue
        k = kind(reply)
        if k == "relay_response":
            return reply
        if k == "punch_hole_response":
            ph = reply.punch_hole_response
            if not ph.socket_addr:
                reason = ph.other_failure or pb.PunchHoleResponse.Failure.Name(ph.failure)
                raise LoadTestError(f"punch refused: {reason}")
            return reply
        raise LoadTestError(f"unexpected {k or 'empty message'} after PunchHoleRequest")
    raise LoadTestError("Failed to connect via rendezvous server (no answer in 18s)")


def relay_via_id_server(conn: MessageConn, request: pb.RequestRelay) -> pb.RelayResponse:
    """A-initiated relay: ``RequestRelay`` to the ID server, then wait for B's ``RelayResponse``.

    Raises:
        LoadTestError: no ``RelayResponse`` within 18 s (a refusal is returned, not raised).
    """
    conn.send(_msg(request_relay=request))
    while True:
        reply = conn.recv(RELAY_RESPONSE_WAIT)
        if kind(reply) == "relay_response":
            return reply.relay_response


def _echo(sock: socket.socket, first: bytes = b"") -> int:
    """Echo bytes back until the peer closes or goes idle; returns bytes echoed."""
    total = 0
    if first:
        sock.sendall(first)
        total += len(first)
    sock.settimeout(SESSION_IDLE)
    while total < ECHO_LIMIT:
        try:
            data = sock.recv(262144)
        except OSError:
            break
        if not data:
            break
        sock.sendall(data)
        total += len(data)
    return total


class BaseDevice:
    """What every controlled device has: an identity, its registration state, push sessions.

    Args:
        reg_interval: seconds between heartbeats (15 s in the real client).
    """

    def __init__(self, target: Target, device_id: str, record: Recorder,
                 reg_interval: float) -> None:
        self.target = target
        self.id = device_id
        self.record = record
        self.reg_interval = reg_interval
        self.ip = target.client_ip()
        """This device's own address (every push answer and relay half comes from it)."""
        self.uuid = str(uuidlib.uuid4()).encode()
        self.pk = os.urandom(32)
        self.confirmed = False
        self.registered_at: float | None = None
        self.retry_at = 0.0
        self.stopping = False
        self._rx: gevent.Greenlet | None = None
        self._sessions: set[gevent.Greenlet] = set()
        self._recent = PushFilter()

    def _start_session(self, k: str, socket_addr: bytes, run: Callable[..., None],
                       *args: object) -> bool:
        """Run ``run(*args)`` for push ``k`` unless it repeats one just seen or we are busy."""
        if not self._recent.admit(k.encode() + socket_addr):
            return False
        if self.stopping or len(self._sessions) >= MAX_SESSIONS:
            return False
        g = gevent.spawn(run, *args)
        self._sessions.add(g)
        g.link(lambda done: self._sessions.discard(done))
        return True

    def stop(self, grace: float = 3.0) -> None:
        """Take no new pushes, let running sessions finish (up to ``grace`` s), then close."""
        self.stopping = True
        if self._sessions:
            gevent.joinall(list(self._sessions), timeout=grace)
        greenlets = list(self._sessions)
        if self._rx is not None:
            greenlets.append(self._rx)
        gevent.killall(greenlets, block=True, timeout=2)
        self._close()

    def _close(self) -> None:
        raise NotImplementedError


class Device(BaseDevice):
    """A controlled RustDesk device: UDP registration plus answers to pushed requests.

    Args:
        relay_only: answer every push with a B-initiated relay (a device behind a symmetric NAT,
            or with TCP listening disabled).
        reg_interval: seconds between heartbeats (15 s in the real client).
    """

    def __init__(self, target: Target, device_id: str, record: Recorder, *,
                 relay_only: bool = False, reg_interval: float = REG_INTERVAL) -> None:
        super().__init__(target, device_id, record, reg_interval)
        self.relay_only = relay_only
        self.last_answer = 0.0
        self.answered = {"direct": 0, "local": 0, "relay": 0}
        family = _family(target.host)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((self.ip or _wildcard(family), 0))
        # (answer kind awaited, its result): a late answer to an earlier try is ignored
        self._waiter: tuple[str, AsyncResult] | None = None
        self.on_push: Callable[[str], None] | None = None

    # --- registration -------------------------------------------------------------------
    def start(self) -> None:
        self._rx = gevent.spawn(self._receive_loop)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _udp_request(self, msg: pb.RendezvousMessage, name: str, expect: str,
                     check: Callable[[pb.RendezvousMessage], None]) -> pb.RendezvousMessage:
        """Send one datagram, wait 3 s for the ``expect`` answer; ``check`` raises on a bad one."""
        with measure(self.record, RT, name) as m:
            waiter = AsyncResult()
            self._waiter = (expect, waiter)
            data = serialize(msg)
            self.sock.sendto(data, self.target.rendezvous)
            try:
                reply: pb.RendezvousMessage = waiter.get(timeout=REG_TIMEOUT)
            except gevent.Timeout:
                raise LoadTestError(f"no UDP answer within {REG_TIMEOUT:.0f}s") from None
            finally:
                self._waiter = None
            m.length = len(data)
            self.last_answer = time.monotonic()
            check(reply)
        return reply

    def register(self) -> None:
        """``RegisterPk`` until the server answers OK (what the client does for a new key)."""
        def check(reply: pb.RendezvousMessage) -> None:
            result = reply.register_pk_response.result
            if result != pb.RegisterPkResponse.OK:
                self.confirmed = False
                if result == pb.RegisterPkResponse.UUID_MISMATCH:
                    # The client renumbers itself: a new random 10-digit ID, registered at once.
                    self.id = str(random.randint(1_000_000_000, 1_999_999_999))
                else:  # TOO_FREQUENT and the rest: the client tries again in 15 s
                    self.retry_at = time.monotonic() + self.reg_interval
                raise LoadTestError(
                    f"RegisterPk refused: {pb.RegisterPkResponse.Result.Name(result)}")

        self._udp_request(
            _msg(register_pk=pb.RegisterPk(id=self.id, uuid=self.uuid, pk=self.pk)),
            "UDP RegisterPk", "register_pk_response", check)
        self.confirmed = True
        if self.registered_at is None:
            self.registered_at = time.monotonic()

    def heartbeat(self) -> None:
        """``RegisterPeer``; the server may ask for the key again (``request_pk``)."""
        reply = self._udp_request(_msg(register_peer=pb.RegisterPeer(id=self.id, serial=0)),
                                  "UDP RegisterPeer", "register_peer_response", lambda r: None)
        if reply.register_peer_response.request_pk:
            self.confirmed = False
            self.register()

    def tick(self) -> None:
        """The client's 1 s timer: register, or heartbeat when the last answer is 15 s old."""
        if not self.confirmed:
            if time.monotonic() >= self.retry_at:
                self.register()
        elif time.monotonic() - self.last_answer >= self.reg_interval:
            self.heartbeat()

    @property
    def online(self) -> bool:
        return self.confirmed and time.monotonic() - self.last_answer < 30.0

    # --- pushes -------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        while True:
            try:
                data, _src = self.sock.recvfrom(4096)
            except OSError:
                return
            msg = parse(data)
            if msg is None:
                continue
            k = kind(msg)
            if k in ("register_peer_response", "register_pk_response"):
                waiting = self._waiter
                if waiting is not None and waiting[0] == k and not waiting[1].ready():
                    waiting[1].set(msg)
            elif k in ("punch_hole", "fetch_local_addr", "request_relay"):
                self._dispatch(k, msg)

    def _dispatch(self, k: str, msg: pb.RendezvousMessage) -> None:
        member = getattr(msg, k)
        handlers: dict[str, Callable[..., None]] = {
            "punch_hole": self._on_punch_hole, "fetch_local_addr": self._on_fetch_local,
            "request_relay": self._on_request_relay}
        if self._start_session(k, bytes(member.socket_addr), handlers[k], member) and self.on_push:
            self.on_push(k)

    def _listen_and_answer(self, reply: Callable[[int], pb.RendezvousMessage], name: str,
                           outcome: str) -> None:
        """Listen on port X, send the answer from port X, accept the controller on X, echo."""
        family = _family(self.target.host)
        listener = _reuse_socket(family)
        try:
            listener.bind((self.ip or _wildcard(family), 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            with measure(self.record, RT, name):
                conn = FramedConn.connect(self.target.rendezvous, source_port=port,
                                          source_ip=self.ip)
                try:
                    conn.send(reply(port))
                finally:
                    conn.close()
            self.answered[outcome] += 1
            listener.settimeout(LISTEN_WAIT)
            try:
                peer, _ = listener.accept()
            except OSError:
                return  # the controller went through the relay instead
        finally:
            listener.close()
        with peer:
            _echo(peer)

    def _on_punch_hole(self, ph: pb.PunchHole) -> None:
        if self.relay_only or ph.nat_type == pb.SYMMETRIC or ph.force_relay:
            self._b_relay(bytes(ph.socket_addr), ph.relay_server,
                          "device: PunchHole → RelayResponse")
            return

        def answer(_port: int) -> pb.RendezvousMessage:
            return _msg(punch_hole_sent=pb.PunchHoleSent(
                socket_addr=ph.socket_addr, id=self.id, relay_server=ph.relay_server,
                nat_type=pb.ASYMMETRIC, version=CLIENT_VERSION))

        self._listen_and_answer(answer, "device: PunchHole → PunchHoleSent", "direct")

    def _on_fetch_local(self, fl: pb.FetchLocalAddr) -> None:
        if self.relay_only:
            self._b_relay(bytes(fl.socket_addr), fl.relay_server,
                          "device: FetchLocalAddr → RelayResponse")
            return
        host = self.ip or ("::1" if _family(self.target.host) == socket.AF_INET6 else "127.0.0.1")

        def answer(port: int) -> pb.RendezvousMessage:
            return _msg(local_addr=pb.LocalAddr(
                socket_addr=fl.socket_addr, local_addr=mangle.encode(host, port, _salt()),
                relay_server=fl.relay_server, id=self.id, version=CLIENT_VERSION))

        self._listen_and_answer(answer, "device: FetchLocalAddr → LocalAddr", "local")

    def _b_relay(self, a_addr: bytes, relay_server: str, name: str) -> None:
        """B-initiated relay: RelayResponse with a fresh uuid, then RequestRelay at the relay."""
        uid = str(uuidlib.uuid4())
        with measure(self.record, RT, name):
            conn = FramedConn.connect(self.target.rendezvous, source_ip=self.ip)
            try:
                conn.send(_msg(relay_response=pb.RelayResponse(
                    socket_addr=a_addr, uuid=uid, relay_server=relay_server, id=self.id,
                    version=CLIENT_VERSION)))
            finally:
                conn.close()
        self.answered["relay"] += 1
        self._join_relay(relay_server, uid)

    def _on_request_relay(self, rr: pb.RequestRelay) -> None:
        """A-initiated relay: answer through the ID server, then join the relay with A's uuid."""
        with measure(self.record, RT, "device: RequestRelay → RelayResponse"):
            conn = FramedConn.connect(self.target.rendezvous, source_ip=self.ip)
            try:
                conn.send(_msg(relay_response=pb.RelayResponse(
                    socket_addr=rr.socket_addr, version=CLIENT_VERSION)))
            finally:
                conn.close()
        self.answered["relay"] += 1
        self._join_relay(rr.relay_server, rr.uuid)

    def _join_relay(self, relay_server: str, uid: str) -> None:
        conn = FramedConn.connect(self.target.relay_addr(relay_server), source_ip=self.ip)
        try:
            conn.send(_msg(request_relay=pb.RequestRelay(
                licence_key=self.target.licence_key, uuid=uid)))
            _echo(conn.sock)
        finally:
            conn.close()


def _salt() -> int:
    return int(time.time() * 1_000_000) & 0xFFFFFFFF


class Controller:
    """The controlling side: punch request, then a direct or relayed session.

    Every connection reports its steps and a total named after its outcome
    (``connect → direct``, ``connect → relay``).
    """

    def __init__(self, target: Target, my_id: str, record: Recorder) -> None:
        self.target = target
        self.id = my_id
        self.record = record
        self.ip = target.client_ip()
        self.outcomes = {"direct": 0, "relay": 0, "failed": 0}

    def connect(self, peer_id: str, *, force_relay: bool = False, payload: int = 4096,
                source_ip: str | None = None) -> str:
        """Open a session to ``peer_id`` and exchange ``payload`` bytes; returns the outcome.

        ``source_ip`` overrides the controller's own address for this connection (the device's
        address puts both "behind one public IP", the LAN case).

        Raises:
            LoadTestError: the server refused (offline, unknown ID, key mismatch) or a step timed
                out; already reported as a failure.
        """
        start = time.perf_counter()
        ip = self.ip if source_ip is None else source_ip
        try:
            outcome = self._connect(peer_id, force_relay, payload, ip)
        except Exception:
            self.outcomes["failed"] += 1
            raise
        self.outcomes[outcome] += 1
        self.record(RT, f"connect → {outcome}", (time.perf_counter() - start) * 1000.0,
                    payload, None)
        return outcome

    def _connect(self, peer_id: str, force_relay: bool, payload: int, ip: str) -> str:
        conn = FramedConn.connect(self.target.rendezvous, source_ip=ip)
        try:
            request = _msg(punch_hole_request=pb.PunchHoleRequest(
                id=peer_id, nat_type=pb.SYMMETRIC if force_relay else pb.ASYMMETRIC,
                licence_key=self.target.licence_key, conn_type=pb.DEFAULT_CONN,
                version=CLIENT_VERSION, force_relay=force_relay))
            with measure(self.record, RT, "PunchHoleRequest"):
                reply = punch(conn, request)
        finally:
            conn.close()
        k = kind(reply)
        if k == "relay_response":
            rr = reply.relay_response
            if rr.refuse_reason:
                raise LoadTestError(f"relay refused: {rr.refuse_reason}")
            self._relay_session(peer_id, rr.relay_server, rr.uuid, payload, ip)
            return "relay"
        ph = reply.punch_hole_response
        host, port = mangle.decode(bytes(ph.socket_addr))
        if not force_relay and port:
            try:
                self._direct_session((host, port), payload,
                                     1.0 if ph.is_local or ph.nat_type == pb.SYMMETRIC else 3.0,
                                     ip)
                return "direct"
            except (OSError, LoadTestError):
                pass  # as the client: fall back to an A-initiated relay
        self._a_relay(peer_id, ph.relay_server, payload, ip)
        return "relay"

    def _direct_session(self, addr: tuple[str, int], payload: int, timeout: float,
                        ip: str) -> None:
        with measure(self.record, RT, "direct session echo") as m:
            sock = socket.create_connection(addr, timeout=timeout,
                                            source_address=(ip, 0) if ip else None)
            with sock:
                data = encode_frame(os.urandom(payload))
                sock.sendall(data)
                if _recv_exact(sock, len(data), 5.0) != data:
                    raise LoadTestError("direct session echoed different bytes")
            m.length = 2 * payload

    def _a_relay(self, peer_id: str, relay_server: str, payload: int, ip: str) -> None:
        """A-initiated relay: RequestRelay via the ID server on a new connection."""
        uid = str(uuidlib.uuid4())
        conn = FramedConn.connect(self.target.rendezvous, source_ip=ip)
        try:
            with measure(self.record, RT, "RequestRelay (via ID server)"):
                rr = relay_via_id_server(conn, pb.RequestRelay(
                    id=peer_id, uuid=uid, relay_server=relay_server,
                    licence_key=self.target.licence_key, conn_type=pb.DEFAULT_CONN))
            if rr.refuse_reason:
                raise LoadTestError(f"relay refused: {rr.refuse_reason}")
        finally:
            conn.close()
        self._relay_session(peer_id, rr.relay_server or relay_server, uid, payload, ip)

    def _relay_session(self, peer_id: str, relay_server: str, uid: str, payload: int,
                       ip: str) -> None:
        with measure(self.record, RT, "relay session echo") as m:
            conn = FramedConn.connect(self.target.relay_addr(relay_server), source_ip=ip)
            try:
                conn.send(_msg(request_relay=pb.RequestRelay(
                    licence_key=self.target.licence_key, id=peer_id, uuid=uid,
                    conn_type=pb.DEFAULT_CONN)))
                # Framed, as the peer-to-peer protocol is: a relay bridging this TCP half to a
                # WebSocket device turns each frame into one message and back.
                data = encode_frame(os.urandom(payload))
                conn.sock.sendall(data)
                if _recv_exact(conn.sock, len(data), 30.0) != data:
                    raise LoadTestError("relay echoed different bytes")
            finally:
                conn.close()
            m.length = 2 * payload


class RelayPair:
    """Two relay halves with the same uuid, as two clients that were told to relay.

    ``transfer(n)`` sends ``n`` bytes each way and reports each direction with its byte count,
    so locust's RPS × size is the relay's throughput.
    """

    def __init__(self, target: Target, record: Recorder) -> None:
        self.target = target
        self.record = record
        self.uuid = str(uuidlib.uuid4())
        self.a: socket.socket | None = None
        self.b: socket.socket | None = None

    def open(self) -> None:
        with measure(self.record, RT, "relay pairing"):
            halves: list[socket.socket] = []
            try:
                for _ in range(2):
                    conn = FramedConn.connect(self.target.relay,
                                              source_ip=self.target.client_ip())
                    halves.append(conn.sock)
                    conn.send(_msg(request_relay=pb.RequestRelay(
                        licence_key=self.target.licence_key, uuid=self.uuid)))
                probe = os.urandom(16)
                halves[0].sendall(probe)
                if _recv_exact(halves[1], 16, 30.0) != probe:
                    raise LoadTestError("relay delivered different bytes")
            except BaseException:
                for s in halves:
                    s.close()
                raise
        self.a, self.b = halves

    def transfer(self, size: int, chunk: int = 65536) -> None:
        if self.a is None or self.b is None:
            raise LoadTestError("relay pair is not open")
        for name, src, dst in (("relay A→B", self.a, self.b), ("relay B→A", self.b, self.a)):
            with measure(self.record, RT, f"{name} {_size(size)}") as m:
                data = os.urandom(min(size, chunk))
                reader = gevent.spawn(_recv_exact, dst, size, 30.0)
                try:
                    sent = 0
                    while sent < size:
                        part = data[:size - sent]
                        src.sendall(part)
                        sent += len(part)
                    received = reader.get(timeout=30.0)
                finally:
                    reader.kill(block=False)
                if len(received) != size:
                    raise LoadTestError("relay lost bytes")
                m.length = size

    def close(self) -> None:
        for s in (self.a, self.b):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self.a = self.b = None


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"
