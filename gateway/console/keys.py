"""Names of the console's own Redis keys (all under ``<prefix>console:``) and the reading of
their JSON values."""

from __future__ import annotations

from typing import Any

import orjson

from registry import Registry


__all__ = ["console_key", "json_object"]


def console_key(registry: Registry, *parts: str) -> str:
    """``console:<parts>`` under the cluster prefix: users, sessions, limits, audit log,
    sampler lease, live sample, history, seen processes, counts."""
    return registry.key("console", *parts)


def json_object(raw: Any) -> dict[str, Any] | None:
    """A stored JSON object, or None when the value is missing, not JSON or not an object."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
