"""A RustDesk client simulator for tests and benchmarks (blocking sockets, bounded waits).

It speaks what real clients speak: UDP registration (RegisterPeer / RegisterPk), TCP frames
with the optional secure-TCP handshake, WebSocket binary messages, NAT test, online query, and
B's answers (PunchHoleSent / LocalAddr / RelayResponse) on fresh connections.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey
from websockets.sync.client import ClientConnection, connect as ws_connect

from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.crypto import counter_nonce, verify_id_pk
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import parse, pb


Msg = pb.RendezvousMessage

_OPEN: list[Any] = []


def close_all() -> None:
    """Close every simulator socket still open (tests call this after each test)."""
    while _OPEN:
        with contextlib.suppress(Exception):
            _OPEN.pop().close()


def msg(**kw: Any) -> Msg:
    return pb.RendezvousMessage(**kw)


class TcpClient:
    """A framed TCP connection to a rendezvous port; skips a leading KeyExchange."""

    def __init__(self, host: str, port: int, timeout: float = 3.0,
                 source_port: int = 0, src_ip: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _OPEN.append(self)
        if source_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((src_ip, source_port))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.dec = FrameDecoder(1 << 20)
        self.frames: list[bytes] = []
        self.box: SecretBox | None = None
        self.send_n = 0
        self.recv_n = 0

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, m: Msg) -> None:
        payload = m.SerializeToString()
        if self.box is not None and len(payload) > 1:
            self.send_n += 1
            payload = self.box.encrypt(payload, counter_nonce(self.send_n)).ciphertext
        self.sock.sendall(encode_frame(payload))

    def recv_frame(self, timeout: float = 3.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                return None
            if not data:
                return None
            self.frames += self.dec.feed(data)
        frame = self.frames.pop(0)
        if self.box is not None and len(frame) > 1:
            self.recv_n += 1
            frame = self.box.decrypt(frame, counter_nonce(self.recv_n))
        return frame

    def recv(self, timeout: float = 3.0, skip_kx: bool = True) -> Msg | None:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if not frame:
                self.sock.sendall(b"\x00")  # echo server heartbeats like real clients
                continue
            m = parse(frame)
            if m is None:
                return None
            if skip_kx and m.WhichOneof("union") == "key_exchange":
                continue
            return m

    def secure(self, server_pk: bytes, timeout: float = 3.0) -> None:
        """The client half of the secure-TCP handshake (first frame must be KeyExchange)."""
        m = self.recv(timeout, skip_kx=False)
        assert m is not None and m.WhichOneof("union") == "key_exchange", m
        keys = list(m.key_exchange.keys)
        assert len(keys) == 1
        eph_pk = VerifyKey(server_pk).verify(keys[0])
        assert len(eph_pk) == 32
        mine = PrivateKey.generate()
        key = os.urandom(32)
        sealed = Box(mine, PublicKey(eph_pk)).encrypt(key, bytes(24)).ciphertext
        self.send(msg(key_exchange=pb.KeyExchange(keys=[bytes(mine.public_key), sealed])))
        self.box = SecretBox(key)

    def closed(self, timeout: float = 2.0) -> bool:
        """True once the server closed the connection (frames still queued are discarded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class WsClient:
    """A WebSocket rendezvous connection: one binary message per protobuf."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None,
                 src_ip: str = "127.0.0.1") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((src_ip, 0))
        sock.settimeout(3)
        sock.connect((host, port))
        self.ws: ClientConnection = ws_connect(f"ws://{host}:{port}/ws/id", sock=sock,
                                               additional_headers=headers, open_timeout=3,
                                               legacy=True)
        _OPEN.append(self)

    def send(self, m: Msg) -> None:
        self.ws.send(m.SerializeToString())

    def recv(self, timeout: float = 3.0) -> Msg | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            except Exception:  # noqa: BLE001 - closed
                return None
            if isinstance(data, str):
                continue
            if not data:
                self.ws.send(b"")
                continue
            return parse(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


@dataclass
class Peer:
    """A device: ID, machine uuid, Ed25519 key, and a UDP socket to the ID server."""

    host: str
    port: int
    id: str
    uuid: bytes = field(default_factory=lambda: os.urandom(8).hex().encode())
    sk: SigningKey = field(default_factory=SigningKey.generate)
    src_ip: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _OPEN.append(self)
        self.udp.bind((self.src_ip, 0))
        self.pushes: list[tuple[Msg, tuple[str, int]]] = []
        self.last_src: tuple[str, int] = ("", 0)

    @property
    def pk(self) -> bytes:
        return bytes(self.sk.verify_key)

    @property
    def udp_addr(self) -> tuple[str, int]:
        host, port = self.udp.getsockname()[:2]
        return str(host), int(port)

    def send_udp(self, m: Msg) -> None:
        self.udp.sendto(m.SerializeToString(), (self.host, self.port))

    def recv_udp(self, kinds: tuple[str, ...], timeout: float = 3.0) -> Msg | None:
        for i, (m, src) in enumerate(self.pushes):
            if m.WhichOneof("union") in kinds:
                self.last_src = src
                return self.pushes.pop(i)[0]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.udp.settimeout(left)
            try:
                data, src = self.udp.recvfrom(65536)
            except TimeoutError:
                return None
            got = parse(data)
            if got is None:
                continue
            if got.WhichOneof("union") in kinds:
                self.last_src = (str(src[0]), int(src[1]))
                return got
            if len(self.pushes) < 100:
                self.pushes.append((got, (str(src[0]), int(src[1]))))

    def register_pk(self, peer_id: str | None = None) -> int:
        self.send_udp(msg(register_pk=pb.RegisterPk(id=peer_id or self.id, uuid=self.uuid,
                                                    pk=self.pk)))
        r = self.recv_udp(("register_pk_response",))
        assert r is not None, "no RegisterPkResponse"
        return int(r.register_pk_response.result)

    def heartbeat(self) -> bool | None:
        """Send RegisterPeer; returns request_pk (None on no answer)."""
        self.send_udp(msg(register_peer=pb.RegisterPeer(id=self.id, serial=0)))
        r = self.recv_udp(("register_peer_response",))
        return None if r is None else bool(r.register_peer_response.request_pk)

    def register(self) -> None:
        """What a client does at start: heartbeat, RegisterPk when asked, heartbeat again."""
        for _ in range(5):
            request_pk = self.heartbeat()
            if request_pk is None:
                continue
            if not request_pk:
                return
            assert self.register_pk() == pb.RegisterPkResponse.OK
        raise AssertionError(f"{self.id} could not register")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.udp.close()


def verify_signed(server_pub_b64: str, signed: bytes) -> tuple[str, bytes] | None:
    return verify_id_pk(base64.b64decode(server_pub_b64), signed)


def mangled(addr: bytes) -> tuple[str, int]:
    return addrmangle.decode(addr)
