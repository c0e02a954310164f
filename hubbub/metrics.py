"""Process-wide Prometheus metrics shared by every role.

Capability metrics live next to their capability; all use the default registry (one process,
one role) and never a per-peer or per-space label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge


__all__ = ["INBOX_DROPPED", "PROCESS_INFO", "REDIS_ERRORS", "REDIS_ROUNDTRIPS", "UP"]

REDIS_ROUNDTRIPS = Counter("hubbub_redis_roundtrips", "Redis round trips", ["op"])
REDIS_ERRORS = Counter("hubbub_redis_errors", "Redis round trips that failed", ["op"])
INBOX_DROPPED = Counter("hubbub_inbox_dropped", "inbox messages dropped", ["reason"])
UP = Gauge("hubbub_up", "1 while the process is healthy (Redis link and listeners up)")
PROCESS_INFO = Gauge("hubbub_process_info", "constant 1 labelled with role and slot",
                     ["role", "slot"])
