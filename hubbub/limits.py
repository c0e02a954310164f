"""The limit building blocks every service uses: a token bucket, a bounded map, per-key counters.

All are sans-I/O: time is an input (``now``, seconds on any clock that does not go back), so
each is deterministic in tests and costs no system call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar


__all__ = ["BoundedMap", "SourceCounter", "TokenBucket", "WindowLimit"]

K = TypeVar("K")
V = TypeVar("V")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    Two ways to spend: ``allow(now, cost)`` takes ``cost`` tokens only when that many are there
    (one call per message or packet, kept to a few operations for the media hot path), and
    ``consume(cost, now)`` takes them whatever is left, going into debt (a byte pump that has
    already moved the bytes, then waits for ``wait_time``). A rate of 0 means unlimited.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = max(0.0, rate)
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0.0

    def _refill(self, now: float) -> float:
        tokens = self.tokens
        if now > self.stamp:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
            self.tokens = tokens
            self.stamp = now
        return tokens

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; False (nothing taken) otherwise."""
        if self.rate <= 0.0:
            return True
        tokens = self.tokens
        if now > self.stamp:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True

    def consume(self, cost: float, now: float) -> None:
        """Take ``cost`` tokens, into debt if need be."""
        if self.rate > 0.0:
            self.tokens = self._refill(now) - cost

    def available(self, now: float) -> float:
        """Tokens there now (infinite when unlimited; negative while in debt)."""
        if self.rate <= 0.0:
            return float("inf")
        return self._refill(now)

    def wait_time(self, need: float, now: float) -> float:
        """Seconds until ``need`` tokens (at most a burst) are there; 0 when they already are."""
        if self.rate <= 0.0:
            return 0.0
        missing = min(need, self.burst) - self._refill(now)
        return max(0.0, missing / self.rate)

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """New rate and burst from ``now`` on; saved tokens above the new burst are dropped."""
        self._refill(now)
        self.rate = max(0.0, rate)
        self.burst = burst
        self.tokens = min(self.tokens, burst) if self.tokens else burst


class BoundedMap(Generic[K, V]):
    """An LRU map with a size cap and a per-entry time to live (``now`` passed in).

    A flood of distinct keys costs bounded memory: past ``max_size`` the least recently used
    entry goes; ``sweep`` drops expired ones from the old end in bounded steps.
    """

    __slots__ = ("_d", "max_size", "ttl")

    def __init__(self, max_size: int, ttl: float) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self._d: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        item = self._d.get(key)
        if item is None:
            return None
        if now - item[0] > self.ttl:
            del self._d[key]
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        d = self._d
        if key in d:
            d.move_to_end(key)
        d[key] = (now, value)
        while len(d) > self.max_size:
            d.popitem(last=False)

    def touch(self, key: K, now: float) -> None:
        item = self._d.get(key)
        if item is not None:
            self._d[key] = (now, item[1])
            self._d.move_to_end(key)

    def pop(self, key: K) -> V | None:
        item = self._d.pop(key, None)
        return None if item is None else item[1]

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Drop expired entries from the old end; at most ``budget`` checks per call."""
        d = self._d
        dropped = 0
        for _ in range(min(budget, len(d))):
            key, (stamp, _value) = next(iter(d.items()))
            if now - stamp <= self.ttl:
                break
            del d[key]
            dropped += 1
        return dropped

    def items(self) -> Iterator[tuple[K, V]]:
        for key, (_stamp, value) in list(self._d.items()):
            yield key, value

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def clear(self) -> None:
        self._d.clear()


class WindowLimit(Generic[K]):
    """At most ``limit`` counted hits per key; a key starts over ``window`` seconds after its
    last counted hit (hbbs' per-ID RegisterPk rule: 3 per 6 s). Bounded to ``max_keys``."""

    __slots__ = ("limit", "map")

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.map: BoundedMap[K, list[int]] = BoundedMap(max_keys, window)

    def blocked(self, key: K, now: float) -> bool:
        """True when ``key`` has used its limit (nothing is counted)."""
        entry = self.map.get(key, now)
        return entry is not None and entry[0] >= self.limit

    def allow(self, key: K, now: float) -> bool:
        """Count one hit unless ``key`` has used its limit."""
        entry = self.map.get(key, now)
        if entry is None:
            self.map.put(key, [1], now)
            return True
        if entry[0] >= self.limit:
            return False
        entry[0] += 1
        self.map.put(key, entry, now)
        return True

    def sweep(self, now: float) -> int:
        return self.map.sweep(now)


class SourceCounter(Generic[K]):
    """How many things (connections, waiting halves) each source holds, at most ``limit`` each.

    Only sources holding something have an entry, so its size follows what is held.
    """

    __slots__ = ("_n", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._n: dict[K, int] = {}

    def add(self, source: K) -> bool:
        """Count one more for ``source``; False (nothing counted) when it is at the limit."""
        n = self._n.get(source, 0)
        if n >= self.limit:
            return False
        self._n[source] = n + 1
        return True

    def remove(self, source: K) -> None:
        """One fewer for ``source`` (a source not counted is ignored)."""
        n = self._n.get(source, 0) - 1
        if n > 0:
            self._n[source] = n
        else:
            self._n.pop(source, None)

    def __getitem__(self, source: K) -> int:
        return self._n.get(source, 0)

    def __len__(self) -> int:
        """Sources holding at least one."""
        return len(self._n)
