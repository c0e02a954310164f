"""Relay soak: many concurrent pairs of every transport mix, every byte checked (slow)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable

import pytest
from support import Cluster, free_port_block, shard_env

from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from loadtest.bench_relay import WsClient, recv_exact, relay_connect, ws_relay_connect


pytestmark = pytest.mark.slow

PAIRS = 120
PER_SIDE = 2 * 1024 * 1024


class _End:
    """One side of a pair: sends messages and reads the peer's, as TCP frames or WS messages."""

    def __init__(self, kind: str, port: int, uuid: str, framed: bool) -> None:
        self.kind = kind
        self.framed = framed
        self.ws: WsClient | None = None
        if kind == "ws":
            self.ws = ws_relay_connect(port + 2, uuid, timeout=30)
            self.sock = self.ws.sock
        else:
            self.sock = relay_connect(port, uuid, timeout=30)
        self._dec = FrameDecoder(1 << 20)
        self._frames: list[bytes] = []

    def send(self, msg: bytes) -> None:
        if self.ws is not None:
            self.ws.send(msg)
        else:
            self.sock.sendall(encode_frame(msg) if self.framed else msg)

    def recv_total(self, total: int) -> bytes:
        """The concatenated payloads of the peer's messages, ``total`` bytes in all."""
        out = bytearray()
        while len(out) < total:
            if self.ws is not None:
                op, data = self.ws.recv()
                assert op == 2
                out += data
            elif self.framed:
                while not self._frames:
                    chunk = self.sock.recv(1 << 16)
                    assert chunk, "closed early"
                    self._frames += self._dec.feed(chunk)
                out += self._frames.pop(0)
            else:
                out += recv_exact(self.sock, min(1 << 16, total - len(out)))
        return bytes(out)


def _messages(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, size = [], 0
    while size < PER_SIDE:
        n = rng.randint(1, 65536)
        out.append(rng.randbytes(n))
        size += n
    return out


def test_many_mixed_pairs_carry_every_byte(cluster: Cluster) -> None:
    port = free_port_block(3)
    env = shard_env(2, RELAY_PORT=str(port), RELAY_TIMEOUT="20", SINGLE_BANDWIDTH="0",
                    TOTAL_BANDWIDTH="0")
    for _ in range(2):
        cluster.start("shard", env=env)
    kinds = [("tcp", "tcp"), ("ws", "tcp"), ("tcp", "ws"), ("ws", "ws")]
    errors: list[str] = []
    ends: list[_End] = []

    def side(me: _End, peer_msgs: list[bytes], mine: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            try:
                def send_all() -> None:
                    for m in mine:
                        me.send(m)

                sender = threading.Thread(target=send_all, daemon=True)
                sender.start()
                expect = b"".join(peer_msgs)
                got = me.recv_total(len(expect))
                if hashlib.sha256(got).digest() != hashlib.sha256(expect).digest():
                    errors.append("corrupted")
                sender.join(60)
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))
        return run

    threads = []
    for i in range(PAIRS):
        ka, kb = kinds[i % len(kinds)]
        framed = "ws" in (ka, kb)
        uuid = f"soak-{i}-{os.urandom(4).hex()}"
        a = _End(ka, port, uuid, framed)
        b = _End(kb, port, uuid, framed)
        ends += [a, b]
        ma, mb = _messages(2 * i), _messages(2 * i + 1)
        threads += [threading.Thread(target=side(a, mb, ma), daemon=True),
                    threading.Thread(target=side(b, ma, mb), daemon=True)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "pairs stalled"
        assert not errors, errors[:5]
    finally:
        for e in ends:
            e.sock.close()
