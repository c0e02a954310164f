"""Relay test helpers shared by the relay's cluster tests: clients of a running set of shards."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import Cluster, HubbubProcess, free_port_block, new_prefix, shard_env

from loadtest.bench_relay import WsClient, recv_exact, relay_connect, ws_relay_connect


__all__ = ["KEY", "PROXY", "TIMEOUT", "Relay", "closed_within", "cross_shard_pair", "new_uuid",
           "relay_env", "running_relay"]

KEY = "relay-test-key"
TIMEOUT = 2.0
PROXY = "127.0.0.9"


@dataclass
class Relay:
    cluster: Cluster
    port: int
    shards: list[HubbubProcess]
    workdir: Path

    opened: list[socket.socket] = field(default_factory=list)

    def connect(self, uuid: str, key: str = KEY, source_ip: str | None = None,
                extra: bytes = b"") -> socket.socket:
        src = (source_ip, 0) if source_ip else None
        s = relay_connect(self.port, uuid, key, source=src, extra=extra)
        self.opened.append(s)
        return s

    def ws(self, uuid: str, key: str = KEY, source_ip: str | None = None,
           headers: dict[str, str] | None = None, extra: bytes = b"") -> WsClient:
        src = (source_ip, 0) if source_ip else None
        c = ws_relay_connect(self.port + 2, uuid, key, source=src, headers=headers, extra=extra)
        self.opened.append(c.sock)
        return c

    def raw(self, port: int | None = None) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port or self.port), timeout=5)
        self.opened.append(s)
        return s

    def close_all(self) -> None:
        for s in self.opened:
            s.close()
        self.opened.clear()

    def metric(self, name: str) -> float:
        """Sum of a metric over the live shards."""
        total = 0.0
        pattern = re.compile(rf"^{re.escape(name)} ([0-9.e+-]+)$", re.M)
        for p in self.shards:
            if p.proc.poll() is None:
                total += sum(float(m) for m in pattern.findall(p.metrics()))
        return total


@contextlib.contextmanager
def running_relay(redis_url: str, workdir: Path, shards: int = 2, **env: str) -> Iterator[Relay]:
    """``shards`` shard processes on one fresh relay port (``relay_env`` plus ``env``)."""
    cluster = Cluster(redis_url, new_prefix(), workdir)
    port = free_port_block(3)
    try:
        procs = [cluster.start("shard", env=relay_env(port, **env)) for _ in range(shards)]
        relay = Relay(cluster, port, procs, workdir)
        try:
            yield relay
        finally:
            relay.close_all()
    finally:
        cluster.stop_all()


def relay_env(relay: int, **extra: str) -> dict[str, str]:
    env = shard_env(2, RELAY_PORT=str(relay), RELAY_TIMEOUT=str(TIMEOUT), KEY=KEY,
                    LIMIT_SPEED="8", SINGLE_BANDWIDTH="0", TOTAL_BANDWIDTH="0",
                    TRUSTED_PROXIES=PROXY)
    env.update(extra)
    return env


def closed_within(sock: socket.socket, within: float) -> bool:
    """True when the peer closes ``sock`` within ``within`` seconds (data is discarded)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionError, OSError):
        return True
    return False


def new_uuid(tag: str) -> str:
    return f"{tag}-{os.urandom(6).hex()}"


def cross_shard_pair(relay: Relay) -> tuple[socket.socket, socket.socket]:
    """A paired TCP relay whose halves were accepted by different shards."""
    for _ in range(40):
        before = relay.metric('hubbub_relay_handoffs_total{outcome="sent"}')
        uuid = new_uuid("x")
        a = relay.connect(uuid)
        b = relay.connect(uuid)
        a.sendall(b"ping")
        assert recv_exact(b, 4) == b"ping"
        if relay.metric('hubbub_relay_handoffs_total{outcome="sent"}') > before:
            return a, b
        a.close()
        b.close()
    raise AssertionError("halves never landed on different shards")
