"""Prometheus metrics of the relay (no per-peer labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge


__all__ = [
    "ACCEPTED",
    "BYTES",
    "CLOSED",
    "HANDOFFS",
    "HELD",
    "PAIRED",
    "PAIRS",
    "REFUSED",
    "THROTTLED",
    "WAITING",
]

ACCEPTED = Counter("hubbub_relay_accepted", "relay connections accepted", ["transport"])
REFUSED = Counter("hubbub_relay_refused", "relay connections refused before pairing", ["reason"])
PAIRED = Counter("hubbub_relay_paired", "relay pairs formed", ["mode"])
CLOSED = Counter("hubbub_relay_closed", "relay pairs ended", ["reason"])
PAIRS = Gauge("hubbub_relay_pairs", "relay pairs active in this shard")
WAITING = Gauge("hubbub_relay_waiting", "relay halves waiting for their other half")
BYTES = Counter("hubbub_relay_bytes", "bytes relayed (both directions)")
THROTTLED = Counter("hubbub_relay_throttled", "times a relay pump paused for its bandwidth limit",
                    ["bucket"])
HANDOFFS = Counter("hubbub_relay_handoffs", "relay halves handed to or from another shard",
                   ["outcome"])
HELD = Gauge("hubbub_relay_held_bytes",
             "bytes the shard's relay pairs hold in write queues and partly assembled messages")
