"""hbbs' RegisterPk limit per source IP, on a bounded, expiring map (``hubbub.limits``).

The per-ID limits (3 per 6 s, ID changes) are ``hubbub.limits.WindowLimit`` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hubbub.limits import BoundedMap


__all__ = ["IpLimiter"]


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
