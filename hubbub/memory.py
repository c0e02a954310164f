"""Give heap memory that the process freed back to the OS.

CPython gets large buffers from glibc's malloc. Memory freed between blocks still in use stays
with the process: glibc shrinks the heap only from its top on its own. After a burst of buffers
(many connections sending large or unfinished messages, then closing) the process's RSS would
therefore stay at its peak although its live data is back where it was. Once a second every
process compares its resident memory with the heap's live bytes; when the difference grew by
``TRIM_STEP`` since the last trim, ``malloc_trim`` hands the free pages back (a few milliseconds at
most, and only after memory was released). Measured on the relay and on the gateway's WebSocket
ports: without it 15-22 MB stayed resident after a few hundred abusive connections closed; with
it RSS returns to within a few MB of its start. Where glibc is not the allocator this does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from typing import Any


__all__ = ["CHECK_EVERY", "TRIM_STEP", "HeapTrimmer", "keep_giving_back", "resident_bytes"]

log = logging.getLogger("hubbub.memory")

TRIM_STEP = 2 * 1024 * 1024
CHECK_EVERY = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def resident_bytes() -> int:
    """This process's resident memory (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class HeapTrimmer:
    """Trim the heap when resident memory not accounted for by the heap's live bytes grew by
    ``step`` since the last trim.

    Sampling the live bytes alone would miss bursts shorter than the sampling period, and the
    allocator's count of free bytes is no guide either (pages stay counted as free after a trim,
    and become resident again when reused); resident memory minus live bytes is what a trim can
    give back, plus a part (code, interpreter arenas, stacks) that is nearly constant.
    """

    def __init__(self, step: int = TRIM_STEP) -> None:
        self.step = step
        self.trims = 0
        self._base: int | None = None
        self._info: Any = None
        self._trim: Any = None
        try:
            libc = ctypes.CDLL(None)
            self._info, self._trim = libc.mallinfo2, libc.malloc_trim
        except (OSError, AttributeError):  # not glibc, or glibc before 2.33
            return
        self._info.restype = _MallInfo2
        self._trim.argtypes = [ctypes.c_size_t]

    @property
    def available(self) -> bool:
        return self._trim is not None and resident_bytes() > 0

    def used_bytes(self) -> int:
        """Bytes in use in the allocator's heaps (0 where unknown)."""
        if self._info is None:
            return 0
        return int(self._info().uordblks)

    def check(self) -> bool:
        """Trim if due; True when it trimmed."""
        if self._trim is None:
            return False
        slack = resident_bytes() - self.used_bytes()
        if self._base is None or slack < self._base:
            self._base = slack
        if slack - self._base < self.step:
            return False
        self.give_back()
        return True

    def give_back(self) -> None:
        """Trim now; what stays resident beyond the live bytes is the new baseline."""
        if self._trim is None:
            return
        self._trim(0)
        self._base = resident_bytes() - self.used_bytes()
        self.trims += 1


async def keep_giving_back(every: float = CHECK_EVERY) -> None:
    """Check once per ``every`` seconds, for the life of the process."""
    trimmer = HeapTrimmer()
    if not trimmer.available:
        return
    while True:
        await asyncio.sleep(every)
        try:
            trimmer.check()
        except Exception:  # never let housekeeping end the process
            log.exception("heap trim failed")
            return
