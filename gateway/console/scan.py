"""Walking keys of one shape without blocking Redis: ``SCAN`` bounded in count and time.

A key shape is given by an example key built by its owner's key function with ``HOLE`` in
place of the variable part, so the console never spells another module's key layout.
"""

from __future__ import annotations

import re
import time

from registry import Registry


__all__ = ["HOLE", "scan_parts"]

HOLE = "\0"
_GLOB = re.compile(r"([*?\[\]\\])")


def _escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


async def scan_parts(registry: Registry, shape: str, starts_with: str = "",
                     limit: int = 1000, budget: float = 0.5, op: str = "console_scan",
                     count_only: bool = False) -> tuple[list[str], int, bool]:
    """The variable parts of keys shaped like ``shape`` that start with ``starts_with``.

    Args:
        shape: a key with ``HOLE`` where the variable part goes.
        limit: stop after this many parts (ignored with ``count_only``).
        budget: stop after this many seconds.
        count_only: only count (no parts kept).

    Returns:
        The parts (empty with ``count_only``), how many keys were seen, and whether the walk
        finished.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    head, tail = shape.split(HOLE)
    pattern = _escape(head) + _escape(starts_with) + "*" + _escape(tail)
    parts: list[str] = []
    seen = 0
    deadline = time.monotonic() + budget
    async with registry.guard(op):
        # scan_iter walks every primary in Cluster mode, one SCAN cursor after another.
        keys = registry.redis.scan_iter(match=pattern, count=1000)
        try:
            async for k in keys:
                seen += 1
                if not count_only:
                    text = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                    parts.append(text[len(head):len(text) - len(tail)])
                    if len(parts) >= limit:
                        return parts, seen, False
                if seen % 256 == 0 and time.monotonic() > deadline:
                    return parts, seen, False
        finally:
            # Stop the generator now (it holds a pooled connection), not when it is collected.
            close = getattr(keys, "aclose", None)
            if close is not None:
                await close()
    return parts, seen, True
