"""RustDesk clients in WebSocket mode: the web client (a controller) and a WebSocket device.

Both talk to the rendezvous WebSocket port (P+2) and the relay WebSocket port (R+2); each binary
message is one bare protobuf, no BytesCodec header. Peers reached this way connect only through
the relay (the server never offers the LAN shortcut to a WebSocket request), and the relay
bridges a WebSocket half to a plain-TCP half: each message becomes one frame and back.

A device in WebSocket mode (``allow-websocket``, or behind a proxy) registers with ``RegisterPk``
on one long-lived WebSocket, echoes the server's empty keep-alive messages, and receives its
pushes on that socket; it always answers with a relay.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid as uuidlib

import gevent
import websocket
from gevent.event import AsyncResult

from hubbub.errors import LoadTestError
from hubbub.wire.rustdesk.messages import kind, parse, pb, serialize
from loadtest.rustdesk_client import (
    CLIENT_VERSION,
    REG_INTERVAL,
    RT,
    SESSION_IDLE,
    BaseDevice,
    NoAnswer,
    _msg,
    punch,
    relay_via_id_server,
)
from loadtest.targets import Recorder, Target, measure


__all__ = ["WebController", "WsConn", "WsDevice"]

REG_ANSWER_TIMEOUT = 5.0


class WsConn:
    """A WebSocket carrying one ``RendezvousMessage`` per binary message."""

    def __init__(self, url: str, timeout: float = 18.0, source_ip: str = "") -> None:
        sock = None
        if source_ip:
            host, port = _host_port(url)
            sock = socket.create_connection((host, port), timeout, source_address=(source_ip, 0))
        try:
            self.ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True,
                                                  socket=sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    def send(self, msg: pb.RendezvousMessage) -> None:
        self.ws.send(serialize(msg), opcode=websocket.ABNF.OPCODE_BINARY)

    def send_raw(self, data: bytes) -> None:
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)

    def recv_raw(self, timeout: float) -> bytes:
        """The next binary message's payload (text messages count as bytes, as the client does)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(f"no answer within {timeout:.0f}s")
            self.ws.settimeout(left)
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException:
                raise LoadTestError("server closed the WebSocket") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise LoadTestError("server closed the WebSocket")
            if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) and data:
                return bytes(data)

    def recv(self, timeout: float) -> pb.RendezvousMessage:
        deadline = time.monotonic() + timeout
        while True:
            data = self.recv_raw(max(0.001, deadline - time.monotonic()))
            msg = parse(data)
            if msg is None:
                raise LoadTestError("undecodable message from the server")
            if kind(msg) != "key_exchange":
                return msg

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
        return host, int(port)
    host, _, port = rest.rpartition(":")
    return host, int(port)


def _ws_url(host: str, port: int) -> str:
    return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"


def _echo_messages(conn: WsConn) -> None:
    """Echo every message until the peer closes or goes quiet (bounded by the idle time)."""
    while True:
        try:
            data = conn.recv_raw(SESSION_IDLE)
        except LoadTestError:
            return
        conn.send_raw(data)


class WsDevice(BaseDevice):
    """A controlled device in WebSocket mode (registration and pushes on one WebSocket)."""

    def __init__(self, target: Target, device_id: str, record: Recorder, *,
                 reg_interval: float = REG_INTERVAL) -> None:
        super().__init__(target, device_id, record, reg_interval)
        self.keep_alive = 0
        self.conn: WsConn | None = None
        self._waiter: AsyncResult | None = None

    def _rendezvous_url(self) -> str:
        return _ws_url(self.target.host, self.target.rendezvous_port + 2)

    def tick(self) -> None:
        """(Re)connect and register until the server answers OK; then only keep-alives flow."""
        if self._rx is None or self._rx.dead:
            self.confirmed = False
            if self.conn is not None:
                self.conn.close()
            with measure(self.record, RT, "WS device connect"):
                self.conn = WsConn(self._rendezvous_url(), source_ip=self.ip)
            self.conn.ws.settimeout(None)
            self._rx = gevent.spawn(self._receive_loop, self.conn)
        if not self.confirmed and time.monotonic() >= self.retry_at:
            self.register()

    def register(self) -> None:
        conn = self.conn
        if conn is None:
            raise LoadTestError("not connected")
        with measure(self.record, RT, "WS RegisterPk"):
            waiter = AsyncResult()
            self._waiter = waiter
            try:
                conn.send(_msg(register_pk=pb.RegisterPk(id=self.id, uuid=self.uuid,
                                                         pk=self.pk)))
                reply: pb.RendezvousMessage = waiter.get(timeout=REG_ANSWER_TIMEOUT)
            except gevent.Timeout:
                self.retry_at = time.monotonic() + self.reg_interval
                raise LoadTestError("no RegisterPkResponse on the WebSocket") from None
            finally:
                self._waiter = None
            rpr = reply.register_pk_response
            if rpr.result != pb.RegisterPkResponse.OK:
                self.retry_at = time.monotonic() + self.reg_interval
                raise LoadTestError(
                    f"RegisterPk refused: {pb.RegisterPkResponse.Result.Name(rpr.result)}")
        self.confirmed = True
        self.keep_alive = rpr.keep_alive
        if self.registered_at is None:
            self.registered_at = time.monotonic()

    def _receive_loop(self, conn: WsConn) -> None:
        while True:
            try:
                opcode, data = conn.ws.recv_data()
            except Exception:
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            if opcode != websocket.ABNF.OPCODE_BINARY:
                continue
            if not data:
                with contextlib.suppress(Exception):
                    conn.send_raw(b"")  # keep-alive: echo the empty message
                continue
            msg = parse(data)
            if msg is None:
                continue
            k = kind(msg)
            if k == "register_pk_response":
                if self._waiter is not None and not self._waiter.ready():
                    self._waiter.set(msg)
            elif k in ("punch_hole", "fetch_local_addr", "request_relay"):
                self._dispatch(k, msg)

    def _dispatch(self, k: str, msg: pb.RendezvousMessage) -> None:
        member = getattr(msg, k)
        if k == "request_relay":
            args = (member, "ws device: RequestRelay → RelayResponse", member.uuid, False)
        else:
            args = (member, f"ws device: {_NAMES[k]} → RelayResponse", str(uuidlib.uuid4()), True)
        self._start_session(k, bytes(member.socket_addr), self._answer_relay, *args)

    def _answer_relay(self, push: pb.PunchHole | pb.FetchLocalAddr | pb.RequestRelay,
                      name: str, uid: str, initiate: bool) -> None:
        with measure(self.record, RT, name):
            conn = WsConn(self._rendezvous_url(), source_ip=self.ip)
            try:
                if initiate:  # B-initiated: B picks the uuid and names itself
                    answer = pb.RelayResponse(socket_addr=push.socket_addr, uuid=uid,
                                              relay_server=push.relay_server, id=self.id,
                                              version=CLIENT_VERSION)
                else:
                    answer = pb.RelayResponse(socket_addr=push.socket_addr,
                                              version=CLIENT_VERSION)
                conn.send(_msg(relay_response=answer))
            finally:
                conn.close()
        host, port = self.target.relay_addr(push.relay_server)
        relay = WsConn(_ws_url(host, port + 2), source_ip=self.ip)
        try:
            relay.send(_msg(request_relay=pb.RequestRelay(
                licence_key=self.target.licence_key, uuid=uid)))
            _echo_messages(relay)
        finally:
            relay.close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()


_NAMES = {"punch_hole": "PunchHole", "fetch_local_addr": "FetchLocalAddr"}


class WebController:
    """A web-client controller: punch request over WebSocket, then a WebSocket relay session."""

    def __init__(self, target: Target, my_id: str, record: Recorder) -> None:
        self.target = target
        self.id = my_id
        self.record = record

    def _url(self, port: int, host: str | None = None) -> str:
        return _ws_url(host or self.target.host, port)

    def connect(self, peer_id: str, payload: int = 4096) -> None:
        """Relay a session to ``peer_id`` and exchange ``payload`` bytes; reports each step.

        Raises:
            LoadTestError: refused, timed out or corrupted; already reported as a failure.
        """
        start = time.perf_counter()
        conn = WsConn(self._url(self.target.rendezvous_port + 2))
        try:
            request = _msg(punch_hole_request=pb.PunchHoleRequest(
                id=peer_id, nat_type=pb.SYMMETRIC, licence_key=self.target.licence_key,
                conn_type=pb.DEFAULT_CONN, version=CLIENT_VERSION, force_relay=True))
            with measure(self.record, RT, "WS PunchHoleRequest"):
                reply = punch(conn, request)
                if kind(reply) == "relay_response" and reply.relay_response.refuse_reason:
                    raise LoadTestError(f"relay refused: {reply.relay_response.refuse_reason}")
        finally:
            conn.close()
        if kind(reply) == "relay_response":
            rr = reply.relay_response
            relay_server, uid = rr.relay_server, rr.uuid
        else:
            relay_server, uid = self._a_relay(peer_id, reply.punch_hole_response.relay_server)
        self._relay_session(peer_id, relay_server, uid, payload)
        self.record(RT, "web connect → relay", (time.perf_counter() - start) * 1000.0, payload,
                    None)

    def _a_relay(self, peer_id: str, relay_server: str) -> tuple[str, str]:
        uid = str(uuidlib.uuid4())
        conn = WsConn(self._url(self.target.rendezvous_port + 2))
        try:
            with measure(self.record, RT, "WS RequestRelay (via ID server)"):
                rr = relay_via_id_server(conn, pb.RequestRelay(
                    id=peer_id, uuid=uid, relay_server=relay_server,
                    licence_key=self.target.licence_key, conn_type=pb.DEFAULT_CONN))
        finally:
            conn.close()
        if rr.refuse_reason:
            raise LoadTestError(f"relay refused: {rr.refuse_reason}")
        return rr.relay_server or relay_server, uid

    def _relay_session(self, peer_id: str, relay_server: str, uid: str, payload: int) -> None:
        host, port = self.target.relay_addr(relay_server)
        with measure(self.record, RT, "WS relay session echo") as m:
            conn = WsConn(self._url(port + 2, host))
            try:
                conn.send(_msg(request_relay=pb.RequestRelay(
                    licence_key=self.target.licence_key, id=peer_id, uuid=uid,
                    conn_type=pb.DEFAULT_CONN)))
                data = os.urandom(payload)
                conn.send_raw(data)
                got = bytearray()
                deadline = time.monotonic() + 30.0
                while len(got) < payload:
                    got += conn.recv_raw(max(0.001, deadline - time.monotonic()))
                if bytes(got) != data:
                    raise LoadTestError("WebSocket relay echoed different bytes")
            finally:
                conn.close()
            m.length = 2 * payload
