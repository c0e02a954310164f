"""Background tasks an object owns: kept referenced while they run, failures logged, cancelled
together when the owner closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any


__all__ = ["TaskSet"]


class TaskSet:
    """A set of running tasks.

    asyncio keeps only weak references to tasks, so a task nobody holds can vanish mid-run;
    this set holds each one until it ends, and logs (on ``log``) any exception it ended with
    instead of leaving it unretrieved.
    """

    __slots__ = ("_log", "_tasks", "_what")

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("%s task failed", self._what, exc_info=exc)

    def cancel(self) -> None:
        """Cancel every task still running."""
        for task in list(self._tasks):
            task.cancel()

    async def wait(self) -> None:
        """Wait until every task running now has ended (however it ends)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel every task still running and wait until they have all ended."""
        self.cancel()
        await self.wait()

    def __len__(self) -> int:
        return len(self._tasks)

