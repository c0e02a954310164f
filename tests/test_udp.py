"""The batched UDP endpoint on real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hubbub.net import listen_socket
from hubbub.udp import DROPPED, DatagramEndpoint


IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux value; the constant is recent


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def _port(ep: DatagramEndpoint) -> int:
    port: int = ep.sockname()[1]
    return port


async def test_a_burst_is_drained_in_batches(client: socket.socket) -> None:
    got: list[bytes] = []
    ep = DatagramEndpoint(listen_socket("127.0.0.1", 0, socket.SOCK_DGRAM, rcvbuf=4 << 20),
                          lambda data, addr: got.append(data), max_batch=64)
    try:
        assert ep.family == socket.AF_INET
        dest = ("127.0.0.1", _port(ep))
        for i in range(500):
            client.sendto(b"%d" % i, dest)
        steps: list[int] = []
        while len(got) < 500 and len(steps) < 1000:
            before = len(got)
            await asyncio.sleep(0)
            steps.append(len(got) - before)
        assert got == [b"%d" % i for i in range(500)]
        # A readiness event reads a full batch and no more; the rest waits for the next.
        assert max(steps) == 64
        assert sum(1 for step in steps if step) >= 8
    finally:
        ep.close()


async def test_answers_reach_the_sender_over_both_families(client: socket.socket) -> None:
    ep: DatagramEndpoint

    def echo(data: bytes, addr: tuple[Any, ...]) -> None:
        assert ep.send(data.upper(), addr)

    ep = DatagramEndpoint(listen_socket("::", 0, socket.SOCK_DGRAM), echo)
    try:
        assert ep.family == socket.AF_INET6
        loop = asyncio.get_running_loop()
        for i in range(20):
            client.sendto(b"ping %d" % i, ("127.0.0.1", _port(ep)))
            data, addr = await loop.run_in_executor(None, client.recvfrom, 100)
            assert data == b"PING %d" % i and addr[1] == _port(ep)
        six = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            six.bind(("::1", 0))
        except OSError:
            six.close()
            return  # no IPv6 loopback here
        with six:
            six.settimeout(2.0)
            six.sendto(b"six", ("::1", _port(ep)))
            data, _ = await loop.run_in_executor(None, six.recvfrom, 100)
            assert data == b"SIX"
    finally:
        ep.close()


async def test_handler_errors_are_counted_logged_once_and_survived(
        client: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    got: list[bytes] = []

    def handler(data: bytes, addr: tuple[Any, ...]) -> None:
        if data.startswith(b"value"):
            raise ValueError(data)
        if data.startswith(b"key"):
            raise KeyError(data)
        got.append(data)

    errors = DROPPED.labels("handler_error")
    before = errors.value
    ep = DatagramEndpoint(listen_socket("127.0.0.1", 0, socket.SOCK_DGRAM), handler)
    try:
        with caplog.at_level(logging.ERROR, logger="hubbub.udp"):
            for i in range(30):
                kind = (b"ok", b"value", b"key")[i % 3]
                client.sendto(kind + b"%d" % i, ("127.0.0.1", _port(ep)))
            await _until(lambda: len(got) == 10 and errors.value - before == 20)
        assert got == [b"ok%d" % i for i in range(0, 30, 3)]
        logged = [r for r in caplog.records if r.name == "hubbub.udp"]
        assert sorted(r.exc_info[0].__name__ for r in logged if r.exc_info and r.exc_info[0]) \
            == ["KeyError", "ValueError"]
    finally:
        ep.close()


async def test_error_reports_and_bad_sends_are_counted_not_raised(
        client: socket.socket) -> None:
    got: list[bytes] = []
    sock = listen_socket("127.0.0.1", 0, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors reach recvfrom
    ep = DatagramEndpoint(sock, lambda data, addr: got.append(data))
    recv_errors, send_errors = DROPPED.labels("recv_error"), DROPPED.labels("send_error")
    r0, s0 = recv_errors.value, send_errors.value
    try:
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        gone = closed.getsockname()
        closed.close()
        assert ep.send(b"anyone?", gone)  # accepted now; the refusal comes back later
        await asyncio.sleep(0.05)
        client.sendto(b"after", ("127.0.0.1", _port(ep)))
        await _until(lambda: got == [b"after"])
        assert recv_errors.value - r0 == 1
        assert not ep.send(b"x", ("::1", 1, 0, 0))  # wrong family
        assert not ep.send(b"x", ("127.0.0.1",))  # wrong shape
        assert not ep.send(b"x" * 70_000, client.getsockname())  # too long
        assert send_errors.value - s0 == 3
    finally:
        ep.close()


async def test_close_stops_reading_even_from_the_handler(client: socket.socket) -> None:
    got: list[bytes] = []
    ep: DatagramEndpoint

    def handler(data: bytes, addr: tuple[Any, ...]) -> None:
        got.append(data)
        ep.close()

    recv_errors = DROPPED.labels("recv_error")
    r0 = recv_errors.value
    ep = DatagramEndpoint(listen_socket("127.0.0.1", 0, socket.SOCK_DGRAM), handler)
    dest = ("127.0.0.1", _port(ep))
    for _ in range(5):
        client.sendto(b"x", dest)
    await _until(lambda: bool(got))
    await asyncio.sleep(0.01)
    assert got == [b"x"] and ep.closed and ep.sock.fileno() == -1
    assert recv_errors.value == r0
    assert not ep.send(b"x", client.getsockname())
    ep.close()  # idempotent
