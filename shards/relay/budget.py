"""How much memory a relay pair, and all pairs of a shard together, may hold.

A pair holds bytes in its two write queues (bounded by backpressure: a side stops reading while
the other side's queue is above its high-water mark, so a queue holds at most that mark plus one
read) and in a fragmented WebSocket message being assembled for a TCP side (``ASSEMBLY_CAP``).
Messages themselves are streamed, never held whole. The budgets are the safety net above those
bounds: a pair over ``PAIR_BUDGET``, or holding more than ``PRESSURE_FLOOR`` while the shard is
over ``SHARD_BUDGET``, stops reading until it is back under; one that stays over for
``STALL_CLOSE`` seconds is closed (reason ``memory``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


__all__ = ["PAIR_BUDGET", "PRESSURE_FLOOR", "RECHECK", "SHARD_BUDGET", "STALL_CLOSE", "TRIM_STEP",
           "ShardMemory", "give_back"]

PAIR_BUDGET = 4 * 1024 * 1024
SHARD_BUDGET = 256 * 1024 * 1024
PRESSURE_FLOOR = 256 * 1024
STALL_CLOSE = 10.0
RECHECK = 0.1
"""Seconds between checks of a pair paused for memory."""
TRIM_STEP = 8 * 1024 * 1024
"""Once pairs released this much since the last trim, free heap pages go back to the OS."""


class ShardMemory:
    """The bytes held by every pair of one shard (each pair reports its own changes)."""

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int = SHARD_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # highest ``used`` since the last trim

    def change(self, old: int, new: int) -> None:
        self.used += new - old
        if self.used > self.peak:
            self.peak = self.used

    def over(self) -> bool:
        return self.used > self.limit

    def trim_due(self) -> bool:
        """True (once) when ``TRIM_STEP`` bytes were released since the last trim."""
        if self.peak - self.used < TRIM_STEP:
            return False
        self.peak = self.used
        return True


_malloc_trim: Callable[[int], int] | None = None


def give_back() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim``); False where unavailable.

    Buffers of pairs that held a lot are freed in the middle of the heap, between blocks still
    in use, and glibc only ever shrinks the heap from its top on its own: without this the
    shard's RSS stays at its peak after the pairs close.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = _no_trim
    return bool(_malloc_trim(0)) or _malloc_trim is not _no_trim


def _no_trim(_pad: int) -> int:
    return 0
