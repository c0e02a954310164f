"""What every relay pair shares, whatever pumps its bytes: limits, statistics, idle time.

A pair draws on two buckets per chunk: its own (SINGLE_BANDWIDTH for both directions together,
or LIMIT_SPEED once blacklisted or downgraded) and the shard's share of TOTAL_BANDWIDTH.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hubbub.limits import TokenBucket
from hubbub.wire.relay.bandwidth import PairStats, burst_for, relay_bucket
from shards.relay import metrics


__all__ = ["MIN_BUDGET", "Pair"]

MIN_BUDGET = 4096
"""A limited pump waits until at least this many bytes may move (fewer, larger reads)."""


class Pair:
    """One relayed connection pair.

    Args:
        uuid: the relay uuid (logs and ``usage`` only).
        addrs: printable peer addresses ``ip:port`` of both halves.
        ips: normalised peer IPs of both halves (list checks).
        now: loop time at pairing.
        rate: the pair's own rate in bytes/s (0 unlimited).
        total: the shard's shared bucket.
        on_closed: called once with the pair and the reason when it ends.
    """

    mode = "base"

    def __init__(self, uuid: str, addrs: tuple[str, str], ips: tuple[str, str], now: float,
                 rate: float, total: TokenBucket, on_closed: Callable[[Pair, str], None]) -> None:
        self.uuid = uuid
        self.addrs = addrs
        self.ips = ips
        self.bucket = relay_bucket(rate, now)
        self.total = total
        self.limited = False
        self.moved = 0
        self.counted = 0
        self.last_active = now
        self.stats = PairStats(started=now)
        self.wall_started = time.time()
        self.closed = False
        self.close_reason = ""
        self._on_closed = on_closed

    # ---------------------------------------------------------------- limits
    def budget(self, now: float) -> float:
        return min(self.bucket.available(now), self.total.available(now))

    def wait_time(self, now: float) -> tuple[float, str]:
        """Seconds until MIN_BUDGET bytes may move, and which bucket is the constraint."""
        own = self.bucket.wait_time(MIN_BUDGET, now)
        shared = self.total.wait_time(MIN_BUDGET, now)
        if own >= shared:
            return own, ("limit" if self.limited else "single")
        return shared, "total"

    def account(self, n: int, now: float) -> None:
        self.moved += n
        self.last_active = now
        self.bucket.consume(n, now)
        self.total.consume(n, now)

    def set_rate(self, rate: float, limited: bool, now: float) -> None:
        self.bucket.set_rate(rate, burst_for(rate), now)
        self.limited = limited

    def flush_metrics(self) -> None:
        if self.moved != self.counted:
            metrics.BYTES.inc(self.moved - self.counted)
            self.counted = self.moved

    # ------------------------------------------------------------- lifecycle
    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._release()
        self.flush_metrics()
        self._on_closed(self, reason)

    def _release(self) -> None:
        """Subclasses drop their sockets and pumps here."""

    def sweep(self, now: float) -> None:
        """Once a second: subclasses free idle resources."""
