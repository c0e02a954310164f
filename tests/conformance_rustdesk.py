"""An independent RustDesk client written from the protocol description, for conformance tests.

Framing, address mangling and the secure-TCP client handshake are implemented here again on
purpose (not imported from the server's wire package) so a mistake shared by both sides cannot
hide. Only the generated protobuf classes are shared; their field numbers are checked against
the published tag bytes in the tests.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid as uuidlib
from typing import Any

from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey
from websockets.sync.client import ClientConnection, connect as ws_connect

from hubbub.wire.rustdesk import rendezvous_pb2 as pb


RUSTDESK_COM_KEY = "OeVuKk5nlHiXp+APNn0Y3pC1Iwpwn44JGqrQCsWqmBw="
TIMEOUT = 5.0
_OPEN: list[Any] = []


def close_all() -> None:
    while _OPEN:
        s = _OPEN.pop()
        try:
            s.close()
        except Exception:  # noqa: BLE001 - best effort in teardown
            pass


# ------------------------------------------------------------------ wire helpers
def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n <= 0x3F:
        return bytes([n << 2]) + payload
    if n <= 0x3FFF:
        return ((n << 2) | 1).to_bytes(2, "little") + payload
    if n <= 0x3FFFFF:
        return ((n << 2) | 2).to_bytes(3, "little") + payload
    return ((n << 2) | 3).to_bytes(4, "little") + payload


def mangle(ip: str, port: int, tm: int | None = None) -> bytes:
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip) + port.to_bytes(2, "little")
    if tm is None:
        tm = int(time.time() * 1_000_000)
    tm &= 0xFFFFFFFF
    ipn = int.from_bytes(socket.inet_aton(ip), "little")
    v = ((ipn + tm) << 49) | (tm << 17) | (port + (tm & 0xFFFF))
    return v.to_bytes(16, "little").rstrip(b"\0")


def demangle(b: bytes) -> tuple[str, int]:
    if len(b) > 16:
        assert len(b) == 18, b.hex()
        return socket.inet_ntop(socket.AF_INET6, b[:16]), int.from_bytes(b[16:], "little")
    v = int.from_bytes(b.ljust(16, b"\0"), "little")
    tm = (v >> 17) & 0xFFFFFFFF
    ip = ((v >> 49) - tm) & 0xFFFFFFFF
    port = ((v & 0xFFFFFF) - (tm & 0xFFFF)) & 0xFFFF
    return socket.inet_ntoa(ip.to_bytes(4, "little")), port


def msg(**kw: Any) -> bytes:
    data: bytes = pb.RendezvousMessage(**kw).SerializeToString()
    return data


def parse(data: bytes) -> pb.RendezvousMessage:
    m = pb.RendezvousMessage()
    m.ParseFromString(data)
    return m


def kind(m: pb.RendezvousMessage) -> str:
    return m.WhichOneof("union") or ""


def verify_idpk(pub_b64: str, signed: bytes) -> tuple[str, bytes]:
    """(id, pk) inside a server-signed IdPk; raises if the signature is bad."""
    body = VerifyKey(base64.b64decode(pub_b64)).verify(signed)
    idpk = pb.IdPk()
    idpk.ParseFromString(body)
    return idpk.id, idpk.pk


def new_id() -> str:
    return str(1_000_000_000 + uuidlib.uuid4().int % 899_999_999)


# ------------------------------------------------------------------ UDP peer (B)
class UdpPeer:
    """A controlled device registering over UDP, like the desktop client's mediator."""

    def __init__(self, server: tuple[str, int], peer_id: str | None = None,
                 src_ip: str | None = None) -> None:
        if src_ip is None:
            # A loopback address of its own (never 127.0.0.x: 127.0.0.1 plays the controller), so
            # the server's per-IP registration limits never couple two tests.
            n = 256 + uuidlib.uuid4().int % 60_000
            src_ip = f"127.{n >> 16}.{(n >> 8) & 255}.{(n & 255) or 1}"
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        _OPEN.append(self.sock)
        self.sock.bind((src_ip, 0))
        self.server = server
        self.id = peer_id or new_id()
        self.uuid = uuidlib.uuid4().hex.encode()
        self.sk = SigningKey.generate()
        self.pk = bytes(self.sk.verify_key)
        self.src_ip = src_ip

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float = TIMEOUT) -> tuple[pb.RendezvousMessage, Any]:
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(65535)
        return parse(data), addr

    def recv_raw(self, timeout: float = TIMEOUT) -> tuple[bytes, Any]:
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(65535)
        return data, addr

    def recv_kind(self, want: str, timeout: float = TIMEOUT) -> pb.RendezvousMessage:
        """The next datagram of kind ``want`` (others, e.g. late answers, are skipped)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(want)
            m, addr = self.recv(left)
            if kind(m) == want:
                assert addr[1] == self.server[1], addr
                return m

    def register_peer(self, serial: int = 0) -> None:
        self.send(msg(register_peer=pb.RegisterPeer(id=self.id, serial=serial)))

    def register_pk(self, peer_id: str | None = None, uuid: bytes | None = None,
                    pk: bytes | None = None) -> None:
        self.send(msg(register_pk=pb.RegisterPk(
            id=peer_id or self.id, uuid=self.uuid if uuid is None else uuid,
            pk=self.pk if pk is None else pk)))

    def register(self) -> None:
        """The mediator's start-up: heartbeat, key on request, heartbeat again."""
        self.register_peer()
        m = self.recv_kind("register_peer_response")
        assert m.register_peer_response.request_pk
        self.register_pk()
        r = self.recv_kind("register_pk_response")
        assert r.register_pk_response.result == pb.RegisterPkResponse.OK, r
        self.register_peer()
        m = self.recv_kind("register_peer_response")
        assert not m.register_peer_response.request_pk


# ------------------------------------------------------------------ TCP and WS
class Tcp:
    """A framed TCP connection to the ID server (optionally bound to a source address)."""

    websocket = False

    def __init__(self, host: str, port: int, src: tuple[str, int] | None = None,
                 reuse: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        _OPEN.append(self.sock)
        if reuse:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if src is not None:
            self.sock.bind(src)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((host, port))
        self.buf = b""
        self.box: SecretBox | None = None
        self.send_n = 0
        self.recv_n = 0

    @property
    def local(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return str(name[0]), int(name[1])

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        if self.box is not None and len(payload) > 1:
            self.send_n += 1
            payload = self.box.encrypt(payload, _nonce(self.send_n)).ciphertext
        self.sock.sendall(frame(payload))

    def _read_frame(self, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        while True:
            if self.buf:
                hl = (self.buf[0] & 3) + 1
                if len(self.buf) >= hl:
                    n = int.from_bytes(self.buf[:hl], "little") >> 2
                    if len(self.buf) >= hl + n:
                        out = self.buf[hl:hl + n]
                        self.buf = self.buf[hl + n:]
                        return out
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk

    def recv_payload(self, timeout: float = TIMEOUT) -> bytes:
        data = self._read_frame(timeout)
        if self.box is not None and len(data) > 1:
            self.recv_n += 1
            data = self.box.decrypt(data, _nonce(self.recv_n))
        return data

    def recv(self, timeout: float = TIMEOUT, skip_kx: bool = True) -> pb.RendezvousMessage:
        """Next message; like the client, skips heartbeats and one leading KeyExchange."""
        skipped = False
        end = time.monotonic() + timeout
        while True:
            data = self.recv_payload(max(0.01, end - time.monotonic()))
            if not data:
                continue
            m = parse(data)
            if skip_kx and kind(m) == "key_exchange" and not skipped:
                skipped = True
                continue
            return m

    def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes (EOF or reset) within ``timeout``; data is discarded."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionError:
                return True
            if not chunk:
                return True
        return False

    def secure(self, server_pub_b64: str, timeout: float = TIMEOUT) -> None:
        """The client side of secure TCP: verify the signed ephemeral key, seal our key."""
        m = parse(self._read_frame(timeout))
        assert kind(m) == "key_exchange", m
        keys = list(m.key_exchange.keys)
        assert len(keys) == 1
        eph_pk = VerifyKey(base64.b64decode(server_pub_b64)).verify(keys[0])
        assert len(eph_pk) == 32
        mine = PrivateKey.generate()
        sym = os.urandom(32)
        sealed = Box(mine, PublicKey(eph_pk)).encrypt(sym, bytes(24)).ciphertext
        assert len(sealed) == 48
        self.sock.sendall(frame(msg(key_exchange=pb.KeyExchange(
            keys=[bytes(mine.public_key), sealed]))))
        self.box = SecretBox(sym)

    def close(self) -> None:
        self.sock.close()


def _nonce(n: int) -> bytes:
    return n.to_bytes(8, "little") + bytes(16)


class Ws:
    """A WebSocket connection to port P+2: one binary message per protobuf."""

    websocket = True

    def __init__(self, host: str, port: int, path: str = "/ws/id",
                 headers: dict[str, str] | None = None, src_ip: str | None = None) -> None:
        h = f"[{host}]" if ":" in host else host
        sock = None
        if src_ip is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((src_ip, 0))
            sock.settimeout(TIMEOUT)
            sock.connect((host, port))
        self.ws: ClientConnection = ws_connect(f"ws://{h}:{port}{path}", open_timeout=TIMEOUT,
                                               sock=sock,
                                               additional_headers=headers, legacy=True)
        _OPEN.append(self.ws)

    @property
    def local(self) -> tuple[str, int]:
        name = self.ws.local_address
        return str(name[0]), int(name[1])

    def send(self, payload: bytes) -> None:
        self.ws.send(payload)

    def recv_payload(self, timeout: float = TIMEOUT) -> bytes:
        data = self.ws.recv(timeout=timeout)
        return data if isinstance(data, bytes) else data.encode()

    def recv(self, timeout: float = TIMEOUT) -> pb.RendezvousMessage:
        end = time.monotonic() + timeout
        while True:
            data = self.recv_payload(max(0.01, end - time.monotonic()))
            if data:
                return parse(data)

    def close(self) -> None:
        self.ws.close()


def punch_request(peer_id: str, licence_key: str, nat_type: pb.NatType = pb.ASYMMETRIC,
                  **kw: Any) -> bytes:
    """What the desktop client sends to connect to ``peer_id``."""
    return msg(punch_hole_request=pb.PunchHoleRequest(
        id=peer_id, nat_type=nat_type, licence_key=licence_key, version="1.4.9", **kw))
