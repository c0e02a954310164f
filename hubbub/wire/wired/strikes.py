"""The strike counter that closes a spaces socket which keeps misbehaving.

Time is an input (``now``, monotonic seconds) so it is deterministic in tests; the message rate
itself is a ``hubbub.limits.TokenBucket``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


__all__ = ["Strikes"]


@dataclass
class Strikes:
    """Counts offences in a sliding ``window``; ``exceeded`` once more than ``limit`` happened.

    A client that keeps sending bad or excess frames is told each time (rate-limited itself)
    and disconnected with 1008 when the count passes the limit.
    """

    limit: int
    window: float = 10.0
    _times: deque[float] = field(default_factory=deque)
    _last_notice: float = -1e9

    def hit(self, now: float) -> bool:
        """Record one offence; returns True when the client must be disconnected."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        # The deque never holds more than limit + 1 entries: the caller closes at that point.
        return len(self._times) > self.limit

    def should_notify(self, now: float, every: float = 1.0) -> bool:
        """Whether to send another error message (at most one per ``every`` seconds)."""
        if now - self._last_notice >= every:
            self._last_notice = now
            return True
        return False
