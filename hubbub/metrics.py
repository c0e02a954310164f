"""Process-wide Prometheus metrics shared by every role.

Capability metrics live next to their capability; all use the default registry (one process,
one role) and never a per-peer or per-space label.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, metrics as _pm
from prometheus_client.core import CounterMetricFamily


__all__ = ["INBOX_DIRECT", "INBOX_DROPPED", "PROCESS_INFO", "REDIS_ERRORS", "REDIS_ROUNDTRIPS",
           "UP", "FastCounter", "FastCounterFamily"]

REDIS_ROUNDTRIPS = Counter("hubbub_redis_roundtrips", "Redis round trips", ["op"])
REDIS_ERRORS = Counter("hubbub_redis_errors", "Redis round trips that failed", ["op"])
INBOX_DROPPED = Counter("hubbub_inbox_dropped", "inbox messages dropped", ["reason"])
INBOX_DIRECT = Counter("hubbub_inbox_direct", "inbox messages sent to a process on this host "
                       "directly (not through Redis)")
UP = Gauge("hubbub_up", "1 while the process is healthy (Redis link and listeners up)")
PROCESS_INFO = Gauge("hubbub_process_info", "constant 1 labelled with role and slot",
                     ["role", "slot"])


# ------------------------------------------------------------------ fast counters
# A prometheus_client Counter takes a lock and goes through two method calls per inc(), which
# is most of the cost of counting a datagram. Every process is one asyncio thread, so a plain
# attribute add is safe; the value is read into an ordinary counter family at scrape time, and
# the exposition (``<name>_total``, ``<name>_created``) is the same as a Counter's.


def _created_series() -> bool:
    # Follows prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES and
    # disable_created_metrics()), so both kinds of counter always expose the same series.
    return bool(getattr(_pm, "_use_created", True))


class FastCounter:
    """A lock-free counter: ``c.value += 1`` or ``c.inc(n)`` (no check that ``n >= 0``).

    Registered on ``registry`` (the default one unless None, as for the children of a
    :class:`FastCounterFamily`).
    """

    __slots__ = ("name", "documentation", "value", "created")

    def __init__(self, name: str, documentation: str, *,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name[:-6] if name.endswith("_total") else name
        self.documentation = documentation
        self.value: float = 0
        self.created = time.time()
        if registry is not None:
            registry.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=())
        family.add_metric((), self.value, self.created if _created_series() else None)
        yield family


class FastCounterFamily:
    """Labelled :class:`FastCounter` children: ``family.labels("a", "b").inc()``.

    Children are cached, so hot paths may also keep the child ``labels()`` returns. Label
    values become strings as with a prometheus_client Counter.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name[:-6] if name.endswith("_total") else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[object, ...], FastCounter] = {}  # as given, and as str
        self._series: dict[tuple[str, ...], FastCounter] = {}  # one per exposed series
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object) -> FastCounter:
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[object, ...]) -> FastCounter:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
        key = tuple(str(value) for value in values)
        child = self._series.get(key)
        if child is None:
            child = FastCounter(self.name, self.documentation, registry=None)
            self._series[key] = child
        self._children[values] = self._children[key] = child
        return child

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        created = _created_series()
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._series.items():
            family.add_metric(key, child.value, child.created if created else None)
        yield family
