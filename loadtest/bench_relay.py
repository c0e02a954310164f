"""Relay benchmark: hubbub's relay against a direct loopback TCP pipe, measured in one run.

Run ``python -m loadtest.bench_relay [--quick]``: it starts its own Redis and two shard processes
on free loopback ports, then measures

* bulk throughput of 1 and 8 concurrent relayed pairs against a direct loopback TCP pipe (the
  same sender and receiver code without the relay), in MB/s, and the relay's CPU seconds per GB
  (from the shards' ``/proc`` counters);
* the resident memory of the shards holding 1,000 idle paired sessions (above their idle RSS).

It prints a Markdown table; ``run(quick)`` returns the rows for ``hubbub bench``. Everything is
bounded in time and size; nothing leaves loopback.

The module also holds the small blocking relay client the tests use (``RequestRelay`` first
message, WebSocket client framing).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import pb, serialize


__all__ = [
    "WsClient",
    "relay_connect",
    "request_relay",
    "request_relay_frame",
    "run",
    "ws_relay_connect",
]


# ------------------------------------------------------------------ client helpers
def request_relay(uuid: str, key: str = "", peer_id: str = "") -> bytes:
    """A serialised ``RendezvousMessage{request_relay}`` as a RustDesk client sends it."""
    msg = pb.RendezvousMessage()
    msg.request_relay.uuid = uuid
    msg.request_relay.licence_key = key
    msg.request_relay.id = peer_id
    return serialize(msg)


def request_relay_frame(uuid: str, key: str = "", peer_id: str = "") -> bytes:
    return encode_frame(request_relay(uuid, key, peer_id))


def relay_connect(port: int, uuid: str, key: str = "", host: str = "127.0.0.1",
                  source: tuple[str, int] | None = None, extra: bytes = b"",
                  timeout: float = 10.0) -> socket.socket:
    """A TCP relay half that has sent its RequestRelay (plus ``extra`` in the same write)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(source)
    s.connect((host, port))
    s.sendall(request_relay_frame(uuid, key) + extra)
    return s


class WsClient:
    """A minimal blocking WebSocket client (masked frames, binary messages)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", path: str = "/ws/relay",
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> WsClient:
        s = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        client = cls(s)
        while b"\r\n\r\n" not in client._buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during WebSocket upgrade")
            client._buf += chunk
        head, _, rest = bytes(client._buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        client._buf = bytearray(rest)
        return client

    @staticmethod
    def frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
        mask = secrets.token_bytes(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        key = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little") if n else b""
        return head + mask + body

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(self.frame(payload, opcode))

    def recv(self) -> tuple[int, bytes]:
        """Next (opcode, payload); raises ConnectionError at EOF."""
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self._buf += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        n = buf[1] & 0x7F
        hl = 2
        if n == 126:
            hl = 4
            if len(buf) < hl:
                return None
            n = int.from_bytes(buf[2:4], "big")
        elif n == 127:
            hl = 10
            if len(buf) < hl:
                return None
            n = int.from_bytes(buf[2:10], "big")
        if len(buf) < hl + n:
            return None
        op = buf[0] & 0x0F
        payload = bytes(buf[hl:hl + n])
        del buf[:hl + n]
        return op, payload

    def close(self) -> None:
        self.sock.close()


def ws_relay_connect(port: int, uuid: str, key: str = "", host: str = "127.0.0.1",
                     headers: dict[str, str] | None = None, timeout: float = 10.0) -> WsClient:
    """A WebSocket relay half that has sent its RequestRelay."""
    c = WsClient.connect(port, host, headers=headers, timeout=timeout)
    c.send(request_relay(uuid, key))
    return c


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def main(argv: list[str] | None = None) -> int:  # replaced below once the bench is defined
    return 0
