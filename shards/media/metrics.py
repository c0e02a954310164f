"""Prometheus metrics of the media plane (no per-peer or per-space labels).

The forwarding path counts into plain ints on ``Counts``; ``flush`` moves them into the
Prometheus counters once a second so the per-packet cost stays an integer add.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge


__all__ = ["CALLS", "Counts", "SESSIONS", "SPACES", "TRANSPORTS", "PRODUCERS", "CONSUMERS",
           "DATA_PRODUCERS", "DATA_CONSUMERS", "flush"]

SESSIONS = Gauge("hubbub_media_sessions", "WebRTC sessions (sockets) on this shard")
SPACES = Gauge("hubbub_media_spaces", "spaces with media on this shard")
TRANSPORTS = Gauge("hubbub_media_transports", "WebRTC transports on this shard")
PRODUCERS = Gauge("hubbub_media_producers", "audio producers")
CONSUMERS = Gauge("hubbub_media_consumers", "audio consumers")
DATA_PRODUCERS = Gauge("hubbub_media_data_producers", "data producers")
DATA_CONSUMERS = Gauge("hubbub_media_data_consumers", "data consumers")
CALLS = Counter("hubbub_media_calls", "media.call requests", ["op", "outcome"])
RTP_IN = Counter("hubbub_media_rtp_received", "RTP packets received from publishers")
RTP_OUT = Counter("hubbub_media_rtp_forwarded", "RTP packets forwarded to subscribers")
RTP_DROPPED = Counter("hubbub_media_rtp_dropped", "RTP packets dropped", ["reason"])
RTCP_OUT = Counter("hubbub_media_rtcp_sent", "RTCP compound packets sent (SR/RR)")
DC_IN = Counter("hubbub_media_datachannel_received", "data-channel messages received")
DC_OUT = Counter("hubbub_media_datachannel_forwarded", "data-channel messages forwarded")
DC_DROPPED = Counter("hubbub_media_datachannel_dropped", "data-channel messages dropped")
STUN = Counter("hubbub_media_stun", "STUN datagrams", ["outcome"])
DTLS = Counter("hubbub_media_dtls_handshakes", "DTLS handshakes", ["outcome"])
UNROUTABLE = Counter("hubbub_media_unroutable", "datagrams from unknown addresses dropped")


class Counts:
    """Hot-path counters, flushed to Prometheus once a second."""

    __slots__ = ("rtp_in", "rtp_out", "drop_srtp", "drop_parse", "drop_not_ready",
                 "drop_unknown_ssrc", "drop_rate", "drop_inactive", "drop_send", "rtcp_out",
                 "dc_in", "dc_out", "dc_dropped", "stun_ok", "stun_bad", "unroutable")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rtp_in = 0
        self.rtp_out = 0
        self.drop_srtp = 0
        self.drop_parse = 0
        self.drop_not_ready = 0
        self.drop_unknown_ssrc = 0
        self.drop_rate = 0
        self.drop_inactive = 0
        self.drop_send = 0
        self.rtcp_out = 0
        self.dc_in = 0
        self.dc_out = 0
        self.dc_dropped = 0
        self.stun_ok = 0
        self.stun_bad = 0
        self.unroutable = 0


def flush(c: Counts) -> None:
    pairs = (
        (c.rtp_in, RTP_IN), (c.rtp_out, RTP_OUT), (c.rtcp_out, RTCP_OUT), (c.dc_in, DC_IN),
        (c.dc_out, DC_OUT), (c.dc_dropped, DC_DROPPED), (c.unroutable, UNROUTABLE),
    )
    for value, counter in pairs:
        if value:
            counter.inc(value)
    for value, reason in ((c.drop_srtp, "srtp"), (c.drop_parse, "parse"),
                          (c.drop_not_ready, "not_ready"), (c.drop_unknown_ssrc, "unknown_ssrc"),
                          (c.drop_rate, "rate"), (c.drop_inactive, "not_loudest"),
                          (c.drop_send, "send_buffer_full")):
        if value:
            RTP_DROPPED.labels(reason).inc(value)
    if c.stun_ok:
        STUN.labels("ok").inc(c.stun_ok)
    if c.stun_bad:
        STUN.labels("rejected").inc(c.stun_bad)
    c.reset()
