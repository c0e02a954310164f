"""Bounds on what an unauthenticated or non-reading client can make a gateway hold."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from test_rustdesk_service import FakeUdp, settle

from gateway.rendezvous import conns as conns_mod, core as core_mod
from gateway.rendezvous.conns import Acceptor, Closed, Conn, TcpConn
from gateway.rendezvous.service import RendezvousService
from hubbub.config import Config
from hubbub.runtime import Context
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.framing import FrameDecoder
from hubbub.wire.rustdesk.messages import pb
from hubbub.wire.rustdesk.stream import RendezvousStream
from registry import Registry


Msg = pb.RendezvousMessage


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("hubbub_rendezvous_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
async def svc(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[RendezvousService]:
    cfg = Config(role="gateway", redis_url=redis_url, prefix=prefix, data_dir=str(tmp_path),
                 key="_", bind="127.0.0.1")
    reg = Registry(redis_url, prefix, "gateway", "testhost", presence=False)
    service = RendezvousService(Context(cfg, reg, None, "testhost"))  # type: ignore[arg-type]
    service.udp = FakeUdp()  # type: ignore[assignment]
    try:
        yield service
    finally:
        service._tasks.cancel()
        await reg.redis.aclose()


async def test_udp_punch_hole_sent_is_bounded(svc: RendezvousService) -> None:
    """A flood of PunchHoleSent while Redis is slow: at most MAX_HOLES_SENT are held (tasks
    and the look-ups they queue), the rest are refused and counted; all of it comes back."""
    limit = core_mod.MAX_HOLES_SENT
    flood = limit * 4
    before = _dropped("punch_sent_busy")
    gate = svc.store.gate
    held = 0
    while not gate.locked():  # Redis "stalls": every look-up queues behind the gate
        await gate.acquire()
        held += 1
    for i in range(flood):
        sent = Msg(punch_hole_sent=pb.PunchHoleSent(
            socket_addr=addrmangle.encode("198.51.100.1", 1000 + i, 0), id=f"9{i:08d}",
            version="1.4.9"))
        svc.on_datagram(sent.SerializeToString(), ("203.0.113.1", 2000 + i))
    await asyncio.sleep(0.05)
    assert len(svc._tasks) == limit and svc.core.holes_sent == limit
    assert _dropped("punch_sent_busy") - before == flood - limit
    for _ in range(held):
        gate.release()
    await settle(svc)
    assert len(svc._tasks) == 0 and svc.core.holes_sent == 0
    # Capacity is back: the next one is handled, not refused.
    svc.on_datagram(Msg(punch_hole_sent=pb.PunchHoleSent(
        socket_addr=addrmangle.encode("198.51.100.1", 999, 0), id="x")).SerializeToString(),
        ("203.0.113.1", 999))
    assert svc.core.holes_sent == 1 and _dropped("punch_sent_busy") - before == flood - limit
    await settle(svc)


class _Host:
    """Just enough of the service for an ``Acceptor``: hands each accepted conn to the test."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[TcpConn] = asyncio.Queue()

    def admit(self, ip: str) -> bool:
        return True

    def new_stream(self, main: bool) -> RendezvousStream:
        return RendezvousStream()

    def release(self, conn: Conn) -> None:
        pass

    def accepted(self, conn: TcpConn, main: bool) -> None:
        self.conns.put_nowait(conn)


async def _pair() -> tuple[asyncio.Server, socket.socket, TcpConn]:
    """A server-side conn and the client socket (small receive buffer, not read yet)."""
    host = _Host()
    server = await asyncio.get_running_loop().create_server(
        lambda: Acceptor(host, True), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    conn = await asyncio.wait_for(host.conns.get(), 2.0)
    assert conn.transport is not None  # a small kernel buffer on our side too
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return server, client, conn


async def test_a_client_that_does_not_read_is_closed_not_buffered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conns_mod, "WRITE_STALL", 0.3)
    before = _dropped("slow_reader")
    server, client, conn = await _pair()
    payload = b"x" * 1024
    most = 0
    started = asyncio.get_running_loop().time()
    for _ in range(10_000):  # ~10 MB if nothing pushed back
        await conn.send_message(payload)
        assert conn.transport is not None
        most = max(most, conn.transport.get_write_buffer_size())
        if conn._closed:
            break
    assert conn._closed and _dropped("slow_reader") - before == 1
    assert most <= conns_mod.WRITE_HIGH + 2 * len(payload)  # writers waited at the mark
    assert asyncio.get_running_loop().time() - started < 2.0
    with pytest.raises(Closed):
        await conn.next_payload(0.1)
    client.close()
    server.close()


async def test_concurrent_writers_cannot_pile_past_the_hard_cap() -> None:
    before = _dropped("slow_reader")
    server, client, conn = await _pair()
    payload = b"y" * 1024
    writers = [asyncio.ensure_future(conn.send_message(payload)) for _ in range(1000)]
    await asyncio.wait_for(asyncio.gather(*writers), 2.0)  # none is left waiting
    assert conn._closed and _dropped("slow_reader") - before == 1
    assert conn.transport is not None and conn.transport.is_closing()
    client.close()
    server.close()


async def test_a_reading_client_gets_everything() -> None:
    server, client, conn = await _pair()
    loop = asyncio.get_running_loop()
    payload = b"z" * 1024
    count = 2000  # far past the high-water mark, read as it comes

    async def read_all() -> int:
        dec = FrameDecoder(1 << 20)
        got = 0
        while got < count:
            data = await loop.sock_recv(client, 65536)
            assert data
            got += len(dec.feed(data))
        return got

    reader = asyncio.ensure_future(read_all())
    for _ in range(count):
        await conn.send_message(payload)
    assert await asyncio.wait_for(reader, 5.0) == count and not conn._closed
    client.close()
    server.close()
