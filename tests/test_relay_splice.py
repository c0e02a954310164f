"""The splice pump on its own: real loopback TCP sockets, no shard around it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from support import tcp_pair

from hubbub.wire.relay.bandwidth import relay_bucket
from shards.relay import splice
from shards.relay.pair import Pair


pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux only")


async def test_spliced_pair_caps_unsent_backlog_and_moves_bytes_in_order() -> None:
    loop = asyncio.get_running_loop()
    a_client, a_relay = tcp_pair()
    b_client, b_relay = tcp_pair()
    for s in (a_relay, b_relay, a_client, b_client):
        s.setblocking(False)
    closed: list[str] = []

    def on_closed(_pair: Pair, reason: str) -> None:
        closed.append(reason)

    pair = splice.SplicePair("u", a_relay, b_relay, (b"head-a", b""), ("a", "b"), ("a", "b"),
                             loop.time(), 0.0, relay_bucket(0.0, loop.time()), on_closed)
    pair.start()
    for s in (a_relay, b_relay):
        got = s.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25))
        assert got == splice.NOTSENT_LOWAT

    payload = os.urandom(8 << 20)

    async def send() -> None:
        await loop.sock_sendall(a_client, payload)
        a_client.shutdown(socket.SHUT_WR)

    async def receive() -> bytes:
        buf = bytearray()
        while True:
            chunk = await loop.sock_recv(b_client, 1 << 16)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) < (2 << 20):
                await asyncio.sleep(0.001)  # a slow reader first: backpressure through the pipe

    got_bytes, _ = await asyncio.wait_for(asyncio.gather(receive(), send()), 20)
    assert hashlib.sha256(got_bytes).digest() == hashlib.sha256(b"head-a" + payload).digest()
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == ["peer_closed"]
    assert pair.moved == len(payload) + len(b"head-a")
    for s in (a_client, b_client):
        s.close()
