"""The gateway's WebSocket ports under huge and unfinished messages: bounded, memory given back.

The spaces port and the ID server's WebSocket port (``RENDEZVOUS_PORT + 2``) of one gateway
process; from one source address, connections that announce a 16 MiB frame, send a frame just
under the port's message cap and never finish it, or start a fragmented message and never finish
it. Resident memory of the gateway is read from ``/proc`` while they are open and after they
closed, over several rounds.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support import (
    Cluster,
    HubbubProcess,
    RedisServer,
    assert_memory_bounded,
    free_port,
    free_port_block,
    new_prefix,
)

from hubbub.memory import HeapTrimmer, resident_bytes
from loadtest.bench_relay import WsClient
from loadtest.cluster import rss_bytes


MiB = 1024 * 1024
MAX_FRAME = 64 * 1024  # both ports' default message cap (SPACES_MAX_FRAME; the ID server's)
PER_KIND = 60
ROUNDS = 3
SOURCE = "127.0.0.7"
DURING_BOUND = 64 * MiB
"""Growth allowed while 2 x 180 abusive connections are open (each holds at most one message
under the 64 KiB cap)."""
AFTER_MARGIN = 12 * MiB
"""Growth allowed after the last round, over the RSS before the first."""


@dataclass
class Gateway:
    proc: HubbubProcess
    ports: dict[str, int]


@pytest.fixture(scope="module")
def gateway(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    cluster = Cluster(redis_srv.url, new_prefix(), tmp_path_factory.mktemp("gwws"))
    try:
        port = free_port_block(4) + 1
        spaces = free_port()
        gw = cluster.start("gateway", "-p", str(port), "--spaces-port", str(spaces))
        yield Gateway(gw, {"spaces": spaces, "rendezvous_ws": port + 2})
    finally:
        cluster.stop_all()


def _header(opcode: int, n: int, fin: bool) -> bytes:
    """A masked client frame header, zero key."""
    first = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        return first + bytes([0x80 | n]) + bytes(4)
    if n < 65536:
        return first + bytes([0x80 | 126]) + n.to_bytes(2, "big") + bytes(4)
    return first + bytes([0x80 | 127]) + n.to_bytes(8, "big") + bytes(4)


def _abuse(port: int, kind: str) -> socket.socket:
    s = WsClient.connect(port, source=(SOURCE, 0)).sock
    if kind == "huge":
        data = _header(2, 16 * MiB, True) + bytes(60_000)
    elif kind == "unfinished":
        data = _header(2, MAX_FRAME - 1, True) + bytes(MAX_FRAME - 2)
    else:  # a fragmented message just under the cap, never finished
        data = b"".join(_header(op, 20_000, False) + bytes(20_000) for op in (2, 0, 0))
    with contextlib.suppress(OSError):
        s.sendall(data)
    return s


def _round(gw: Gateway, peak: list[int], per_kind: int = PER_KIND) -> list[socket.socket]:
    socks = []
    for port in gw.ports.values():
        for kind in ("huge", "unfinished", "fragments"):
            for _ in range(per_kind):
                socks.append(_abuse(port, kind))
                if len(socks) % 50 == 0:
                    peak[0] = max(peak[0], rss_bytes(gw.proc.proc.pid))
    time.sleep(0.5)
    peak[0] = max(peak[0], rss_bytes(gw.proc.proc.pid))
    return socks


def test_unfinished_and_huge_messages_stay_bounded_and_memory_comes_back(
        gateway: Gateway) -> None:
    for s in _round(gateway, [0], per_kind=5):  # first use of each code path is not growth
        s.close()
    time.sleep(2.0)
    start = rss_bytes(gateway.proc.proc.pid)
    peaks, afters = [], []
    for _ in range(ROUNDS):
        peak = [start]
        socks = _round(gateway, peak)
        for s in socks:
            s.close()
        time.sleep(3.0)  # closing handshakes end (spaces: close_timeout 2 s), a trim check runs
        peaks.append(peak[0] - start)
        afters.append(rss_bytes(gateway.proc.proc.pid) - start)
    assert_memory_bounded(start, peaks, afters, DURING_BOUND, AFTER_MARGIN)


@pytest.mark.parametrize("name", ["spaces", "rendezvous_ws"])
def test_huge_frame_header_is_refused_at_once(gateway: Gateway, name: str) -> None:
    s = _abuse(gateway.ports[name], "huge")
    s.settimeout(3)
    client = WsClient(s)
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            op, payload = client.recv()
            if op == 8:
                assert payload[:2] == (1009).to_bytes(2, "big")  # message too big
                break
    s.close()


def test_heap_trimmer_gives_freed_buffers_back() -> None:
    """In this process: buffers freed between live ones stay resident until the trimmer runs."""
    trimmer = HeapTrimmer()
    if not trimmer.available:
        pytest.skip("not glibc")
    trimmer.give_back()  # start without free pages left resident by earlier tests
    keep, drop = [], []
    for i in range(400):  # 64 KiB buffers (below the mmap threshold), small ones between them
        drop.append(bytearray(65536))  # (above CPython's small-object size: malloc's heap)
        keep.append(bytearray(1000 + i))
    keep.append(bytearray(100_000))  # the heap's top stays in use: glibc trims only from there
    before = resident_bytes()
    drop.clear()
    assert resident_bytes() > before - 8 * MiB  # freed, but still resident
    assert trimmer.check() and trimmer.trims == 2
    assert resident_bytes() < before - 16 * MiB
    assert not trimmer.check()  # nothing new to give back
    del keep
