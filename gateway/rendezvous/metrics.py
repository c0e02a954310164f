"""Prometheus metrics of the ID server (no per-peer labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from hubbub.metrics import FastCounter, FastCounterFamily


__all__ = [
    "CONNECTIONS",
    "DATAGRAMS",
    "DROPPED",
    "HEARTBEATS",
    "LIVE_FLUSHED",
    "ONLINE_PEERS",
    "PUNCH_REQUESTS",
    "REGISTRATIONS",
    "ROUTED",
    "SECURE_HANDSHAKES",
    "STREAM_MESSAGES",
]

# The two counted per heartbeat are lock-free (a plain add); they export as any counter.
DATAGRAMS = FastCounterFamily("hubbub_rendezvous_datagrams",
                              "UDP datagrams received by message type", ["type"])
STREAM_MESSAGES = Counter("hubbub_rendezvous_stream_messages",
                          "TCP/WebSocket messages received by type", ["transport", "type"])
HEARTBEATS = FastCounter("hubbub_rendezvous_heartbeats", "RegisterPeer heartbeats accepted")
REGISTRATIONS = Counter("hubbub_rendezvous_registrations", "RegisterPk answers by result",
                        ["transport", "result"])
PUNCH_REQUESTS = Counter("hubbub_rendezvous_punch_requests", "punch and relay requests by outcome",
                         ["outcome"])
ROUTED = Counter("hubbub_rendezvous_routed",
                 "messages routed through another gateway's inbox", ["kind"])
DROPPED = Counter("hubbub_rendezvous_dropped", "input dropped by reason", ["reason"])
CONNECTIONS = Gauge("hubbub_rendezvous_connections", "open rendezvous connections", ["transport"])
ONLINE_PEERS = Gauge("hubbub_rendezvous_online_peers",
                     "peers registered with this process and heard within 30 s")
LIVE_FLUSHED = Counter("hubbub_rendezvous_live_flushed", "liveness records written to Redis")
SECURE_HANDSHAKES = Counter("hubbub_rendezvous_secure_handshakes", "secure TCP handshakes done")
