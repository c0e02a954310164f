"""The buffered pump on its own: raw TCP pairs sharing one read buffer, real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable

import pytest
import uvloop
from support import tcp_pair

from hubbub.wire.relay.bandwidth import relay_bucket
from hubbub.wire.rustdesk.framing import encode_frame
from loadtest.bench_relay import WsClient
from shards.relay import buffered
from shards.relay.budget import PRESSURE_FLOOR, ShardMemory
from shards.relay.buffered import BufferedPair
from shards.relay.pair import Pair


async def _send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def _receive(sock: socket.socket, n: int, slow_until: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            break
        buf += chunk
        if len(buf) < slow_until:
            await asyncio.sleep(0.001)  # a slow reader: partial writes and backpressure
    return bytes(buf)


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_raw_pairs_share_the_read_buffer_without_mixing_bytes(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Several pairs moving data both ways at once, with tiny kernel buffers so that writes are
    often partial: every byte arrives in order on the right socket (on either event loop)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_relay_pairs_both_ways())


async def _relay_pairs_both_ways() -> None:
    loop = asyncio.get_running_loop()
    closed: list[str] = []

    def on_closed(_pair: Pair, reason: str) -> None:
        closed.append(reason)

    jobs = []
    pairs = []
    clients = []
    for i in range(3):
        a_client, a_relay = tcp_pair()
        b_client, b_relay = tcp_pair()
        for s in (a_relay, b_relay):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        for s in (a_relay, b_relay, a_client, b_client):
            s.setblocking(False)
        heads = (f"head-a{i}".encode(), f"head-b{i}".encode())
        pair = BufferedPair(f"u{i}", (a_relay, b_relay), ("tcp", "tcp"), heads, ("a", "b"),
                          ("a", "b"), loop.time(), 0.0, relay_bucket(0.0, loop.time()), on_closed,
                          framed=False)
        await pair.start()
        pairs.append(pair)
        forward, backward = os.urandom(3 << 20), os.urandom(1 << 20)
        clients += [a_client, b_client]
        jobs.append((heads[0] + forward, _receive(b_client, len(heads[0] + forward), 1 << 20),
                     _send(a_client, forward)))
        jobs.append((heads[1] + backward, _receive(a_client, len(heads[1] + backward), 0),
                     _send(b_client, backward)))

    results = await asyncio.wait_for(
        asyncio.gather(*(asyncio.gather(recv, send) for _, recv, send in jobs)), 30)
    for (expected, _, _), (got, _) in zip(jobs, results, strict=True):
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
    for s in clients[::2]:
        s.close()  # either side closing ends the pair
    for _ in range(100):
        if len(closed) == len(pairs):
            break
        await asyncio.sleep(0.01)
    assert closed == ["peer_closed"] * len(pairs)
    for s in clients[1::2]:
        s.close()


# ------------------------------------------------------------------ memory budgets
async def _mixed_pair(memory: ShardMemory, closed: list[str]
                      ) -> tuple[BufferedPair, socket.socket, socket.socket]:
    """A paired WebSocket half (client end ``w``) and TCP half (client end ``t``)."""
    loop = asyncio.get_running_loop()
    w, w_relay = tcp_pair()
    t, t_relay = tcp_pair()
    for s in (w, w_relay, t, t_relay):
        s.setblocking(False)
    w.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    w_relay.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    pair = BufferedPair("m", (w_relay, t_relay), ("ws", "tcp"), (b"", b""), ("w", "t"), ("w", "t"),
                      loop.time(), 0.0, relay_bucket(0.0, loop.time()),
                      lambda _p, reason: closed.append(reason), memory=memory)
    await pair.start()
    return pair, w, t


async def test_pair_over_the_shard_budget_is_paused_then_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fragmented message that keeps the shard over its budget: the sender is paused (the
    relay reads no more of it) and the pair is closed once it stayed over too long."""
    monkeypatch.setattr(buffered, "STALL_CLOSE", 0.5)
    loop = asyncio.get_running_loop()
    memory = ShardMemory(limit=64 * 1024)
    closed: list[str] = []
    pair, w, t = await _mixed_pair(memory, closed)
    first = WsClient.frame(b"\0" * 300_000, 2, fin=False)
    await loop.sock_sendall(w, first)
    for _ in range(100):
        if memory.used >= 300_000:
            break
        await asyncio.sleep(0.01)
    assert memory.used == pair.held == 300_000
    sender = pair.sides[0]
    assert "memory" in sender._pauses
    for _ in range(200):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == ["memory"]
    assert memory.used == 0
    w.close()
    t.close()


async def test_pair_paused_for_memory_resumes_when_the_reader_catches_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over budget only while its reader lags: paused, resumed, and every byte arrives."""
    loop = asyncio.get_running_loop()
    memory = ShardMemory(limit=1)  # always over: only pairs holding PRESSURE_FLOOR are paused
    closed: list[str] = []
    pair, w, t = await _mixed_pair(memory, closed)
    payload = os.urandom(3 << 20)
    sending = asyncio.ensure_future(loop.sock_sendall(t, encode_frame(payload)))
    await asyncio.sleep(0.3)  # the WebSocket reader reads nothing yet: the relay's queue fills
    assert pair.held > PRESSURE_FLOOR and "memory" in pair.sides[1]._pauses and not closed
    client = WsClient(w)
    w.setblocking(True)
    op, got = await asyncio.wait_for(loop.run_in_executor(None, client.recv), 20)
    await sending
    assert op == 2 and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert not closed
    w.close()
    t.close()
