"""The table of relay halves waiting for their other half. Sans-I/O: ``now`` is passed in.

hbbr pairs two connections that sent the same ``uuid``; the first one waits up to the pairing
timeout. The table is bounded twice: past ``max_waiting`` halves in all, or ``max_per_source``
halves from one source address, a new half is refused rather than letting one abuser hold every
slot (and descriptor) with connections that will never pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from hubbub.limits import SourceCounter


__all__ = ["TableFull", "WaitingTable"]

T = TypeVar("T")


class TableFull(Exception):
    """Too many halves are waiting (in all, or from this source); refuse the new one."""


class WaitingTable(Generic[T]):
    """Halves waiting by uuid, oldest first.

    Args:
        timeout: seconds a half may wait.
        max_waiting: most halves waiting at once.
        max_per_source: most halves waiting at once from one source (e.g. an IP address).
    """

    def __init__(self, timeout: float, max_waiting: int = 50_000,
                 max_per_source: int = 256) -> None:
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_per_source = max_per_source
        self._waiting: dict[str, tuple[float, T, str]] = {}
        self._sources: SourceCounter[str] = SourceCounter(max_per_source)

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[T]:
        return iter([half for _, half, _ in self._waiting.values()])

    def sources(self) -> int:
        """Distinct sources with halves waiting."""
        return len(self._sources)

    def arrive(self, uuid: str, half: T, now: float, source: str = "") -> T | None:
        """The waiting partner of ``half`` (taken out of the table), or None after parking it.

        Raises:
            TableFull: nothing waits under ``uuid`` and the table (or the source) is full.
        """
        entry = self._waiting.get(uuid)
        if entry is not None:
            self._remove(uuid)
            return entry[1]
        if len(self._waiting) >= self.max_waiting:
            raise TableFull(f"{len(self._waiting)} relay halves already waiting")
        if not self._sources.add(source):
            raise TableFull(f"{self.max_per_source} relay halves already waiting from {source}")
        self._waiting[uuid] = (now + self.timeout, half, source)
        return None

    def _remove(self, uuid: str) -> None:
        _, _, source = self._waiting.pop(uuid)
        self._sources.remove(source)

    def discard(self, uuid: str, half: T) -> bool:
        """Forget ``half`` if it still waits under ``uuid``."""
        entry = self._waiting.get(uuid)
        if entry is not None and entry[1] is half:
            self._remove(uuid)
            return True
        return False

    def expire(self, now: float) -> list[T]:
        """Take out and return every half whose wait is over."""
        out: list[T] = []
        # Insertion order is deadline order (one timeout for all), so stop at the first live one.
        for uuid, (deadline, half, _) in list(self._waiting.items()):
            if deadline > now:
                break
            self._remove(uuid)
            out.append(half)
        return out

    def next_deadline(self) -> float | None:
        for deadline, _, _ in self._waiting.values():
            return deadline
        return None
