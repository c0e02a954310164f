"""Prometheus metrics of the spaces host (no per-space or per-player labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram


__all__ = ["CHANNEL_DROPPED", "CLOSED", "ERRORS", "MEDIA_CALLS", "MESSAGES_IN", "MESSAGES_OUT",
           "PLAYERS", "POSITION_RECORDS", "POSITION_TICKS", "REAPED", "SOCKETS", "SPACES",
           "TICK_LAG"]

SOCKETS = Gauge("hubbub_spaces_sockets", "spaces WebSocket connections on this gateway")
SPACES = Gauge("hubbub_spaces_spaces", "spaces with at least one member on this gateway")
PLAYERS = Gauge("hubbub_spaces_players", "space memberships held by this gateway")
MESSAGES_IN = Counter("hubbub_spaces_messages_in", "client messages received", ["subject"])
MESSAGES_OUT = Counter("hubbub_spaces_messages_out", "frames sent to clients")
ERRORS = Counter("hubbub_spaces_errors", "error messages sent to clients", ["code"])
CLOSED = Counter("hubbub_spaces_closed", "connections closed by the server", ["reason"])
POSITION_TICKS = Counter("hubbub_spaces_position_ticks", "position ticks that delivered a batch")
POSITION_RECORDS = Counter("hubbub_spaces_position_records", "location records received")
MEDIA_CALLS = Counter("hubbub_spaces_media_calls", "media.call requests to shards", ["outcome"])
CHANNEL_DROPPED = Counter("hubbub_spaces_channel_dropped",
                          "space channel messages that do not fit their contract (dropped)")
REAPED = Counter("hubbub_spaces_reaped_players", "players removed after their gateway died")
TICK_LAG = Histogram("hubbub_spaces_tick_lag_seconds",
                     "delay from a position tick's boundary to its delivery",
                     buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5))
