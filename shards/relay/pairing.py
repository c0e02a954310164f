"""The table of relay halves waiting for their other half. Sans-I/O: ``now`` is passed in.

hbbr pairs two connections that sent the same ``uuid``; the first one waits up to the pairing
timeout. The table is bounded: past ``max_waiting`` entries a new half is refused rather than
letting an abuser grow memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar


__all__ = ["TableFull", "WaitingTable"]

T = TypeVar("T")


class TableFull(Exception):
    """Too many halves are waiting; the new one must be refused."""


class WaitingTable(Generic[T]):
    """Halves waiting by uuid, oldest first.

    Args:
        timeout: seconds a half may wait.
        max_waiting: most halves waiting at once.
    """

    def __init__(self, timeout: float, max_waiting: int = 50_000) -> None:
        self.timeout = timeout
        self.max_waiting = max_waiting
        self._waiting: dict[str, tuple[float, T]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[T]:
        return iter([half for _, half in self._waiting.values()])

    def arrive(self, uuid: str, half: T, now: float) -> T | None:
        """The waiting partner of ``half`` (taken out of the table), or None after parking it.

        Raises:
            TableFull: nothing waits under ``uuid`` and the table is full.
        """
        entry = self._waiting.pop(uuid, None)
        if entry is not None:
            return entry[1]
        if len(self._waiting) >= self.max_waiting:
            raise TableFull(f"{len(self._waiting)} relay halves already waiting")
        self._waiting[uuid] = (now + self.timeout, half)
        return None

    def discard(self, uuid: str, half: T) -> bool:
        """Forget ``half`` if it still waits under ``uuid``."""
        entry = self._waiting.get(uuid)
        if entry is not None and entry[1] is half:
            del self._waiting[uuid]
            return True
        return False

    def expire(self, now: float) -> list[T]:
        """Take out and return every half whose wait is over."""
        out: list[T] = []
        # Insertion order is deadline order (one timeout for all), so stop at the first live one.
        for uuid, (deadline, half) in list(self._waiting.items()):
            if deadline > now:
                break
            del self._waiting[uuid]
            out.append(half)
        return out

    def next_deadline(self) -> float | None:
        for deadline, _ in self._waiting.values():
            return deadline
        return None
