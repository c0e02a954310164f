"""A spaces player for load tests: the Wired client's signalling, over websocket-client.

The player opens the WebSocket, joins a space, sets its name, chats, moves and leaves, waiting for
the host's echo of each change the way the reference client's UI would show it (the host
publishes chat, name and similar changes to the whole space, the author included).

Movement uses hubbub's batched-position extension (``subscribe_positions`` plus binary
21-byte location records): a browser sends the same records over a WebRTC data channel, which a
locust process cannot open. To measure fan-out latency without a clock protocol, the load test
writes its send time (milliseconds, modulo 10^9) into the record's position x; receivers on the
same machine read it back. The host treats bytes 1..20 as opaque, so this changes nothing for it.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import gevent
import orjson
import websocket
from gevent.event import AsyncResult

from hubbub.errors import LoadTestError
from hubbub.wire.wired.positions import decode_batch
from loadtest.targets import Recorder, Target, measure


__all__ = ["MOVE_HZ", "Player"]

MOVE_HZ = 15.0
"""The reference client publishes its location 15 times a second."""
ANSWER_TIMEOUT = 10.0
MAX_WAITERS = 64
WS = "spaces"
_RECORD = struct.Struct("<B3i4h")
_STAMP_MOD = 1_000_000_000

Predicate = Callable[[Any], bool]


def _now_ms() -> int:
    return int(time.time() * 1000) % _STAMP_MOD


class Player:
    """One Wired client connection (it may be re-used for several join/leave rounds)."""

    def __init__(self, target: Target, record: Recorder, *, name: str) -> None:
        self.target = target
        self.record = record
        self.name = name
        self.ip = target.client_ip()
        """This player's machine (its own 127/8 address against a loopback target)."""
        self.ws: websocket.WebSocket | None = None
        self.player_id: int | None = None
        self.space: str | None = None
        self.positions_supported: bool | None = None
        self.errors: list[dict[str, Any]] = []
        self.received: dict[str, int] = {}
        # (subject sent, subject expected, predicate on its data, result)
        self._waiters: list[tuple[str, str, Predicate, AsyncResult]] = []
        self._rx: gevent.Greenlet | None = None
        self._mover: gevent.Greenlet | None = None
        self._seq = 0

    # --- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        with measure(self.record, WS, "connect"):
            sock = None
            if self.ip:
                sock = socket.create_connection((self.target.host, self.target.spaces_port),
                                                ANSWER_TIMEOUT, source_address=(self.ip, 0))
            try:
                ws = websocket.create_connection(self.target.spaces_url, timeout=ANSWER_TIMEOUT,
                                                 enable_multithread=True, socket=sock)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        ws.settimeout(None)
        self.ws = ws
        self._rx = gevent.spawn(self._receive_loop, ws)

    def close(self) -> None:
        greenlets = [g for g in (self._mover, self._rx) if g is not None]
        gevent.killall(greenlets, block=True, timeout=2)
        self._mover = self._rx = None
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close(timeout=1)
        self.ws = None
        self.player_id = self.space = None

    def _send(self, subject: str, data: Any) -> int:
        if self.ws is None:
            raise LoadTestError("not connected")
        frame = orjson.dumps({"subject": subject, "data": data})
        self.ws.send(frame.decode(), opcode=websocket.ABNF.OPCODE_TEXT)
        return len(frame)

    def _request(self, name: str, subject: str, data: Any, expect: str,
                 predicate: Predicate) -> Any:
        """Send one message and wait for the host's answer (an echo or a reply)."""
        if len(self._waiters) >= MAX_WAITERS:
            raise LoadTestError("too many unanswered messages")
        waiter = AsyncResult()
        entry = (subject, expect, predicate, waiter)
        self._waiters.append(entry)
        try:
            with measure(self.record, WS, name) as m:
                m.length = self._send(subject, data)
                try:
                    return waiter.get(timeout=ANSWER_TIMEOUT)
                except gevent.Timeout:
                    raise LoadTestError(f"no {expect} within {ANSWER_TIMEOUT:.0f}s") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _receive_loop(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                opcode, data = ws.recv_data()
            except Exception as exc:  # closed or broken: fail whoever waits
                for *_, waiter in list(self._waiters):
                    if not waiter.ready():
                        waiter.set_exception(LoadTestError(f"connection lost: {exc}"))
                return
            if opcode == websocket.ABNF.OPCODE_BINARY:
                self._on_batch(data)
            elif opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                return

    def _on_text(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.record(WS, "host frame", 0.0, len(data), LoadTestError("host sent invalid JSON"))
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("subject"), str):
            self.record(WS, "host frame", 0.0, len(data), LoadTestError("host frame shape"))
            return
        subject: str = obj["subject"]
        payload = obj.get("data")
        if subject in self.received or len(self.received) < 64:  # a host may invent subjects
            self.received[subject] = self.received.get(subject, 0) + 1
        if subject == "error" and isinstance(payload, dict):
            if payload.get("subject") == "subscribe_positions":
                self.positions_supported = False
            if len(self.errors) < 100:
                self.errors.append(payload)
            for sent, _, _, waiter in list(self._waiters):
                if sent == payload.get("subject") and not waiter.ready():
                    waiter.set_exception(LoadTestError(
                        f"host error {payload.get('code')}: {payload.get('message')}"))
            return
        for _, expect, predicate, waiter in list(self._waiters):
            if expect == subject and not waiter.ready():
                with contextlib.suppress(Exception):
                    if predicate(payload):
                        waiter.set(payload)

    def _on_batch(self, frame: bytes) -> None:
        records = decode_batch(frame)
        if records is None:
            self.record(WS, "position batch", 0.0, len(frame),
                        LoadTestError("undecodable position batch"))
            return
        now = _now_ms()
        ages = [(now - _RECORD.unpack(rec)[1]) % _STAMP_MOD for rec in records
                if rec[0] != self.player_id]
        ages = [a for a in ages if a < 60_000]  # records without a load-test stamp are not timed
        if ages:
            self.record(WS, "position batch (oldest record age)", float(max(ages)), len(frame),
                        None)

    # --- the Wired flows ----------------------------------------------------------------
    def join(self, uri: str) -> int:
        """``join`` → ``join_success``; returns the playerId."""
        reply = self._request("join", "join", uri, "join_success",
                              lambda d: isinstance(d, dict) and d.get("uri") == uri)
        pid = reply.get("playerId")
        if not isinstance(pid, int) or not 0 <= pid <= 255:
            raise LoadTestError(f"join_success with playerId {pid!r}")
        self.player_id, self.space = pid, uri
        return pid

    def set_name(self, name: str) -> None:
        mine = self.player_id
        self._request("set_name", "set_name", name, "player_name",
                      lambda d: d.get("playerId") == mine and d.get("name") == name)
        self.name = name

    def chat(self, text: str | None = None) -> None:
        self._seq += 1
        body = text or f"{self.name} says hi #{self._seq}"
        mine = self.player_id
        self._request("chat", "chat", body, "player_chat",
                      lambda d: d.get("playerId") == mine and d.get("text") == body)

    def set_grounded(self, grounded: bool) -> None:
        mine = self.player_id
        self._request("set_grounded", "set_grounded", grounded, "player_grounded",
                      lambda d: d.get("playerId") == mine and d.get("grounded") == grounded)

    def set_avatar(self, avatar: str | None) -> None:
        mine = self.player_id
        self._request("set_avatar", "set_avatar", avatar, "player_avatar",
                      lambda d: d.get("playerId") == mine and d.get("avatar") == avatar)

    def set_address(self, address: str | None) -> None:
        mine = self.player_id
        self._request("set_address", "set_address", address, "player_address",
                      lambda d: d.get("playerId") == mine and d.get("address") == address)

    def leave(self) -> None:
        """``leave``: the host answers nothing to the leaver, so only the send is timed."""
        if self.space is None:
            return
        with measure(self.record, WS, "leave") as m:
            m.length = self._send("leave", self.space)
        self.stop_moving()
        self.player_id = self.space = None

    def player_count(self, uri: str) -> int:
        """``GET /player-count/<uri>`` as the Wired web app fetches it."""
        path = "/player-count/" + urllib.parse.quote(uri, safe=":/")
        cls = http.client.HTTPSConnection if self.target.spaces_tls else http.client.HTTPConnection
        with measure(self.record, "HTTP", "GET /player-count") as m:
            conn = cls(self.target.host, self.target.spaces_port, timeout=ANSWER_TIMEOUT,
                       source_address=(self.ip, 0) if self.ip else None)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read(64)
            finally:
                conn.close()
            m.length = len(body)
            if resp.status != 200:
                raise LoadTestError(f"GET /player-count answered {resp.status}")
            try:
                return int(body.decode().strip() or "0")
            except ValueError:
                raise LoadTestError(f"player count {body[:20]!r} is not a number") from None

    # --- movement -----------------------------------------------------------------------
    def start_moving(self, hz: float = MOVE_HZ) -> bool:
        """Opt in to batched positions and send a record ``hz`` times a second.

        Returns False (and does not move) when the host lacks the extension.
        """
        if self.ws is None or self.player_id is None:
            return False
        if self.positions_supported is None:
            self._send("subscribe_positions", True)
            gevent.sleep(0.2)  # an error answer arrives within a round trip on loopback
            if self.positions_supported is None:
                self.positions_supported = True
        if not self.positions_supported:
            return False
        if self._mover is None:
            self._mover = gevent.spawn(self._move_loop, hz)
        return True

    def stop_moving(self) -> None:
        if self._mover is not None:
            self._mover.kill(block=True, timeout=1)
            self._mover = None

    def _move_loop(self, hz: float) -> None:
        period = 1.0 / hz
        angle = 0.0
        next_at = time.monotonic()
        while self.ws is not None and self.player_id is not None:
            angle += 0.05
            y, z = math.sin(angle) * 5.0, math.cos(angle) * 5.0
            rec = _RECORD.pack(self.player_id, _now_ms(), round(y * 100000), round(z * 100000),
                               0, 0, 0, 10000)
            try:
                self.ws.send(rec, opcode=websocket.ABNF.OPCODE_BINARY)
            except Exception as exc:
                self.record(WS, "move", 0.0, len(rec), exc)
                return
            next_at += period
            gevent.sleep(max(0.0, next_at - time.monotonic()))
