"""Names of the console's own Redis keys (all under ``<prefix>console:``)."""

from __future__ import annotations

from registry import Registry


__all__ = ["console_key"]


def console_key(registry: Registry, *parts: str) -> str:
    """``console:<parts>`` under the cluster prefix: users, sessions, limits, audit log,
    sampler lease, live sample, history, seen processes, counts."""
    return registry.key("console", *parts)
