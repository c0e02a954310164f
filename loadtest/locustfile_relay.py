"""RustDesk relay throughput: pairs of halves with one uuid moving bytes both ways."""

from __future__ import annotations

from loadtest.users import RelayPairUser


__all__ = ["RelayPairUser"]
