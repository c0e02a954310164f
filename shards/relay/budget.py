"""How much memory a relay pair, and all pairs of a shard together, may hold.

A pair holds bytes in its two write queues (bounded by backpressure: a side stops reading while
the other side's queue is above its high-water mark, so a queue holds at most that mark plus one
read) and in a fragmented WebSocket message being assembled for a TCP side (``ASSEMBLY_CAP``).
Messages themselves are streamed, never held whole. The budgets are the safety net above those
bounds: a pair over ``PAIR_BUDGET``, or holding more than ``PRESSURE_FLOOR`` while the shard is
over ``SHARD_BUDGET``, stops reading until it is back under; one that stays over for
``STALL_CLOSE`` seconds is closed (reason ``memory``). What closed pairs free goes back to the
OS through the process's heap trimming (``hubbub.memory``).
"""

from __future__ import annotations


__all__ = ["PAIR_BUDGET", "PRESSURE_FLOOR", "RECHECK", "SHARD_BUDGET", "STALL_CLOSE",
           "ShardMemory"]

PAIR_BUDGET = 4 * 1024 * 1024
SHARD_BUDGET = 256 * 1024 * 1024
PRESSURE_FLOOR = 256 * 1024
STALL_CLOSE = 10.0
RECHECK = 0.1
"""Seconds between checks of a pair paused for memory."""


class ShardMemory:
    """The bytes held by every pair of one shard (each pair reports its own changes)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = SHARD_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def change(self, old: int, new: int) -> None:
        self.used += new - old

    def over(self) -> bool:
        return self.used > self.limit

