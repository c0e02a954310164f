"""What a load-test client talks to, and how it reports each operation.

The client modules never import locust: they call a ``Recorder`` for every operation, so the same
code runs inside a locust user (where the recorder fires locust ``request`` events) and in tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


__all__ = ["NullRecorder", "Recorder", "Target", "measure"]


@dataclass(frozen=True)
class Target:
    """A hubbub deployment as its clients see it (one host; loopback in tests and CI)."""

    host: str = "127.0.0.1"
    rendezvous_port: int = 21116
    relay_port: int = 21117
    spaces_port: int = 4000
    licence_key: str = ""
    """What clients send as ``licence_key`` (the server's public key, or empty)."""
    spaces_tls: bool = False
    spread_ips: bool = True
    """Give every simulated machine its own 127/8 source address (IPv4 loopback targets)."""

    @property
    def nat_port(self) -> int:
        return self.rendezvous_port - 1

    @property
    def rendezvous(self) -> tuple[str, int]:
        return self.host, self.rendezvous_port

    @property
    def relay(self) -> tuple[str, int]:
        return self.host, self.relay_port

    @property
    def spaces_url(self) -> str:
        scheme = "wss" if self.spaces_tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.spaces_port}/"

    def client_ip(self) -> str:
        """A source address for one simulated machine, or ``""`` to let the OS choose.

        Linux delivers all of 127.0.0.0/8 to the loopback interface, so against an IPv4 loopback
        target every client can come from its own address: per-IP limits, "same public IP" LAN
        decisions and address bookkeeping then see many machines, as in production.
        """
        if self.spread_ips and self.host.startswith("127."):
            return (f"127.{random.randint(1, 254)}.{random.randint(0, 255)}."
                    f"{random.randint(1, 254)}")
        return ""

    def relay_addr(self, relay_server: str) -> tuple[str, int]:
        """Where a ``relay_server`` string from the server points (``host[:port]``).

        As in the real client, a name without a port means port 21117 of that name, and an empty
        string means the rendezvous host's port + 1; the load test maps the deployment's own
        advertised host onto ``relay_port`` so clusters on non-default ports work.
        """
        text = relay_server.strip()
        if not text:
            return self.relay
        host, port = text, 0
        if text.startswith("["):
            end = text.find("]")
            host = text[1:end] if end > 0 else text
            rest = text[end + 1:] if end > 0 else ""
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif text.count(":") == 1:
            name, _, num = text.partition(":")
            if num.isdigit():
                host, port = name, int(num)
        return host, port or self.relay_port


class Recorder(Protocol):
    """Receives one call per client operation (locust's ``request`` event shape)."""

    def __call__(self, request_type: str, name: str, response_time: float,
                 response_length: int, exception: BaseException | None) -> None: ...


class NullRecorder:
    """Keeps the last operations in memory (bounded); for tests and dry runs."""

    def __init__(self, limit: int = 10_000) -> None:
        self.calls: list[tuple[str, str, float, int, BaseException | None]] = []
        self.limit = limit

    def __call__(self, request_type: str, name: str, response_time: float,
                 response_length: int, exception: BaseException | None) -> None:
        if len(self.calls) < self.limit:
            self.calls.append((request_type, name, response_time, response_length, exception))


class Measurement:
    """Set ``length`` inside a ``measure`` block to report the bytes the operation moved."""

    __slots__ = ("length",)

    def __init__(self) -> None:
        self.length = 0


@contextmanager
def measure(record: Recorder, request_type: str, name: str) -> Iterator[Measurement]:
    """Time the block and report it; an exception is reported as a failure and re-raised."""
    m = Measurement()
    start = time.perf_counter()
    try:
        yield m
    except Exception as exc:  # a killed greenlet (GreenletExit) is not a failure
        record(request_type, name, (time.perf_counter() - start) * 1000.0, m.length, exc)
        raise
    record(request_type, name, (time.perf_counter() - start) * 1000.0, m.length, None)
