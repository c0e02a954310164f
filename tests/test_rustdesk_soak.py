"""Soak (``-m slow``): many devices heartbeating through gateways sharing one port, punches
throughout, memory flat."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest
from rustdesk_sim import TcpClient, close_all, msg
from support import Cluster, free_port, free_port_block

from hubbub.wire.rustdesk.messages import parse, pb
from loadtest.cluster import rss_bytes


pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


def test_soak_heartbeats_and_punches(cluster: Cluster) -> None:
    port = free_port_block(4) + 1
    gws = [cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()))
           for _ in range(2)]
    devices = []
    for i in range(600):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{2 + i // 25}.{1 + i % 25}", 0))  # 25 devices per IP, like offices
        s.setblocking(False)
        devices.append((str(1_100_000_000 + i), s))
    for i, (dev_id, s) in enumerate(devices):
        s.sendto(msg(register_pk=pb.RegisterPk(id=dev_id, uuid=dev_id.encode(),
                                               pk=dev_id.encode().ljust(32, b"k")))
                 .SerializeToString(), ("127.0.0.1", port))
        if i % 100 == 99:
            time.sleep(0.1)  # devices start over time, not all in one millisecond
    time.sleep(1.0)
    rng = random.Random(5)
    rss0 = [rss_bytes(g.proc.pid) // 1024 for g in gws]
    punches = ok = 0
    end = time.monotonic() + 25
    while time.monotonic() < end:
        for dev_id, s in devices:
            s.sendto(msg(register_peer=pb.RegisterPeer(id=dev_id)).SerializeToString(),
                     ("127.0.0.1", port))
        for _ in range(10):
            dev_id, s = rng.choice(devices)
            while True:  # drop what queued up (heartbeat answers)
                try:
                    s.recv(4096)
                except BlockingIOError:
                    break
            a = TcpClient("127.0.0.1", port)
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=dev_id)))
            punches += 1
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    m = parse(s.recv(4096))
                except BlockingIOError:
                    time.sleep(0.002)
                    continue
                if m is not None and m.WhichOneof("union") in ("punch_hole",
                                                              "fetch_local_addr"):
                    ok += 1
                    break
            a.close()
        time.sleep(0.5)
    assert ok == punches
    for g, before in zip(gws, rss0, strict=True):
        assert rss_bytes(g.proc.pid) // 1024 - before < 20_000
    for _, s in devices:
        s.close()
