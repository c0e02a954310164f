"""The RustDesk web client as a load-test controller: everything over WebSocket.

The web client talks to the rendezvous WebSocket port (P+2) and the relay WebSocket port (R+2);
each binary message is one bare protobuf, no BytesCodec header. Peers reached this way connect
only through the relay (the server never offers the LAN shortcut to a WebSocket request), and the
relay bridges the WebSocket half to the device's plain-TCP half: each message becomes one frame.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid as uuidlib

import websocket

from hubbub.errors import LoadTestError
from hubbub.wire.rustdesk.messages import kind, parse, pb, serialize
from loadtest.rustdesk_client import CLIENT_VERSION, PUNCH_WAITS, RELAY_RESPONSE_WAIT, RT, _msg
from loadtest.targets import Recorder, Target, measure


__all__ = ["WebController", "WsConn"]


class WsConn:
    """A WebSocket carrying one ``RendezvousMessage`` per binary message."""

    def __init__(self, url: str, timeout: float = 18.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True)

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
                raise LoadTestError(f"no answer within {timeout:.0f}s")
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


class WebController:
    """A web-client controller: punch request over WebSocket, then a WebSocket relay session."""

    def __init__(self, target: Target, my_id: str, record: Recorder) -> None:
        self.target = target
        self.id = my_id
        self.record = record

    def _url(self, port: int, host: str | None = None) -> str:
        h = host or self.target.host
        return f"ws://[{h}]:{port}/" if ":" in h else f"ws://{h}:{port}/"

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
                reply = self._punch(conn, request)
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

    def _punch(self, conn: WsConn, request: pb.RendezvousMessage) -> pb.RendezvousMessage:
        for wait in PUNCH_WAITS:
            conn.send(request)
            try:
                reply = conn.recv(wait)
            except LoadTestError as exc:
                if "no answer" in str(exc):
                    continue
                raise
            k = kind(reply)
            if k == "relay_response":
                if reply.relay_response.refuse_reason:
                    raise LoadTestError(f"relay refused: {reply.relay_response.refuse_reason}")
                return reply
            if k == "punch_hole_response":
                ph = reply.punch_hole_response
                if not ph.socket_addr:
                    reason = ph.other_failure or pb.PunchHoleResponse.Failure.Name(ph.failure)
                    raise LoadTestError(f"punch refused: {reason}")
                return reply
            raise LoadTestError(f"unexpected {k or 'empty message'} after PunchHoleRequest")
        raise LoadTestError("Failed to connect via rendezvous server (no answer in 18s)")

    def _a_relay(self, peer_id: str, relay_server: str) -> tuple[str, str]:
        uid = str(uuidlib.uuid4())
        conn = WsConn(self._url(self.target.rendezvous_port + 2))
        try:
            with measure(self.record, RT, "WS RequestRelay (via ID server)"):
                conn.send(_msg(request_relay=pb.RequestRelay(
                    id=peer_id, uuid=uid, relay_server=relay_server,
                    licence_key=self.target.licence_key, conn_type=pb.DEFAULT_CONN)))
                while True:
                    reply = conn.recv(RELAY_RESPONSE_WAIT)
                    if kind(reply) == "relay_response":
                        break
        finally:
            conn.close()
        if reply.relay_response.refuse_reason:
            raise LoadTestError(f"relay refused: {reply.relay_response.refuse_reason}")
        return reply.relay_response.relay_server or relay_server, uid

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
