"""hbbr's bandwidth units, bucket sizes and downgrade rule. Sans-I/O: ``now`` is passed in.

hbbr's settings are "Mb/s" computed as ``value * 1024 * 1024`` bit/s; a bucket here
(``hubbub.limits.TokenBucket``) counts bytes, so its rate is ``value * 131072`` bytes/s. A rate
of 0 means unlimited. Buckets may go into debt (a splice or read can return more than was
available); the pump then waits until the debt is paid, which keeps the long-run average exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubbub.limits import TokenBucket


__all__ = ["BYTES_PER_MBIT", "PairStats", "burst_for", "mbps_to_bytes", "relay_bucket"]

BYTES_PER_MBIT = 1024 * 1024 // 8
BURST_SECONDS = 0.05
MIN_BURST = 16 * 1024


def mbps_to_bytes(value: float) -> float:
    """hbbr "Mb/s" setting -> bytes per second (0 stays 0 = unlimited)."""
    return max(0.0, value) * BYTES_PER_MBIT


def relay_bucket(rate: float, now: float) -> TokenBucket:
    """A pair's or shard's bucket: ``rate`` bytes/s (0 unlimited), a burst of ``burst_for``."""
    return TokenBucket(rate, burst_for(rate), now)


def burst_for(rate: float) -> float:
    """``BURST_SECONDS`` worth of ``rate``, at least 16 KiB."""
    return max(max(0.0, rate) * BURST_SECONDS, MIN_BURST)


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
