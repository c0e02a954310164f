"""Token buckets with hbbr's units, and the downgrade rule. Sans-I/O: ``now`` is passed in.

hbbr's settings are "Mb/s" computed as ``value * 1024 * 1024`` bit/s; a bucket here counts bytes,
so its rate is ``value * 131072`` bytes/s. A rate of 0 means unlimited. Buckets may go into debt
(a splice or read can return more than was available); the pump then waits until the debt is
paid, which keeps the long-run average exact.
"""

from __future__ import annotations

from dataclasses import dataclass


__all__ = ["BYTES_PER_MBIT", "Bucket", "PairStats", "mbps_to_bytes"]

BYTES_PER_MBIT = 1024 * 1024 // 8
BURST_SECONDS = 0.05
MIN_BURST = 16 * 1024


def mbps_to_bytes(value: float) -> float:
    """hbbr "Mb/s" setting -> bytes per second (0 stays 0 = unlimited)."""
    return max(0.0, value) * BYTES_PER_MBIT


class Bucket:
    """A token bucket; ``rate`` bytes/s, burst of ``BURST_SECONDS`` worth (at least 16 KiB)."""

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = 0.0
        self.burst = 0.0
        self.tokens = 0.0
        self._last = now
        self.set_rate(rate, now)

    def set_rate(self, rate: float, now: float) -> None:
        self._refill(now)
        self.rate = max(0.0, rate)
        self.burst = max(self.rate * BURST_SECONDS, MIN_BURST)
        self.tokens = min(self.tokens, self.burst) if self.tokens else self.burst

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0.0

    def _refill(self, now: float) -> None:
        if now > self._last:
            if self.rate > 0:
                self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        """Bytes that may be moved now (infinite when unlimited; may be negative)."""
        if self.rate <= 0.0:
            return float("inf")
        self._refill(now)
        return self.tokens

    def consume(self, n: int, now: float) -> None:
        if self.rate > 0.0:
            self._refill(now)
            self.tokens -= n

    def wait_time(self, need: float, now: float) -> float:
        """Seconds until ``need`` bytes are available (0 when they already are)."""
        if self.rate <= 0.0:
            return 0.0
        self._refill(now)
        missing = min(need, self.burst) - self.tokens
        return max(0.0, missing / self.rate)


@dataclass
class PairStats:
    """Traffic statistics of one pair, updated once a second (hbbr's ``usage`` figures)."""

    started: float
    total: int = 0
    last_total: int = 0
    last_check: float = 0.0
    current_bps: float = 0.0
    peak_bps: float = 0.0

    def tick(self, total: int, now: float) -> None:
        """Account ``total`` bytes moved so far at time ``now``."""
        self.total = total
        if not self.last_check:
            self.last_check = self.started
        span = now - self.last_check
        if span <= 0:
            return
        self.current_bps = (total - self.last_total) * 8 / span
        self.peak_bps = max(self.peak_bps, self.current_bps)
        self.last_total = total
        self.last_check = now

    def average_bps(self, now: float) -> float:
        age = now - self.started
        return self.total * 8 / age if age > 0 else 0.0

    def should_downgrade(self, now: float, single_mbps: float, threshold: float,
                         start_check: float) -> bool:
        """hbbr's rule: after ``start_check`` s, a lifetime average above
        ``single_bandwidth * threshold`` limits the pair to LIMIT_SPEED for the rest of its life."""
        if single_mbps <= 0 or now - self.started < start_check:
            return False
        return self.average_bps(now) > single_mbps * 1024 * 1024 * threshold
