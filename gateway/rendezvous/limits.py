"""Bounded, expiring in-memory maps and the registration rate limiters.

Every map here has a maximum size (least recently used entries go first) and an expiry, so a
flood of distinct IPs or IDs costs bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar


__all__ = ["BoundedMap", "IdLimiter", "IpLimiter"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """An LRU map with a size cap and a per-entry time to live (``now`` passed in)."""

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


@dataclass
class _IpEntry:
    count: int = 0
    last: float = 0.0
    ids: set[str] = field(default_factory=set)
    ids_last: float = 0.0


class IpLimiter:
    """RegisterPk rate per source IP (hbbs rules, bounded).

    More than ``burst`` requests with gaps under ``window`` seconds are refused; an IP may
    register at most ``max_ids`` distinct IDs per ``ids_window`` (known IDs always pass).
    """

    def __init__(self, burst: int = 30, window: float = 60.0, max_ids: int = 300,
                 ids_window: float = 86400.0, max_ips: int = 100_000) -> None:
        self.burst = burst
        self.window = window
        self.max_ids = max_ids
        self.ids_window = ids_window
        self.map: BoundedMap[str, _IpEntry] = BoundedMap(max_ips, ids_window)

    def allow(self, ip: str, peer_id: str, now: float) -> bool:
        entry = self.map.get(ip, now)
        if entry is None:
            self.map.put(ip, _IpEntry(1, now, {peer_id}, now), now)
            return True
        self.map.touch(ip, now)
        if now - entry.last > self.window:
            entry.count = 0
        elif entry.count > self.burst:
            return False
        entry.count += 1
        entry.last = now
        if now - entry.ids_last > self.ids_window:
            entry.ids.clear()
        if peer_id not in entry.ids:
            if len(entry.ids) >= self.max_ids:
                return False
            entry.ids.add(peer_id)
        entry.ids_last = now
        return True

    def describe(self, ip: str, now: float) -> str | None:
        entry = self.map.get(ip, now)
        if entry is None:
            return None
        return (f"{entry.count}/{now - entry.last:.0f}s "
                f"{len(entry.ids)}/{now - entry.ids_last:.0f}s")


class IdLimiter:
    """At most ``burst`` RegisterPk per ID within ``window`` seconds (hbbs: 3 per 6 s)."""

    def __init__(self, burst: int = 3, window: float = 6.0, max_ids: int = 200_000) -> None:
        self.burst = burst
        self.map: BoundedMap[str, list[float]] = BoundedMap(max_ids, window)

    def blocked(self, peer_id: str, now: float) -> bool:
        """True when ``peer_id`` has used its burst (nothing is counted)."""
        entry = self.map.get(peer_id, now)
        return entry is not None and entry[0] >= self.burst

    def allow(self, peer_id: str, now: float) -> bool:
        entry = self.map.get(peer_id, now)
        if entry is None:
            self.map.put(peer_id, [1.0], now)
            return True
        if entry[0] >= self.burst:
            return False
        entry[0] += 1
        self.map.put(peer_id, entry, now)
        return True
