"""The shard's single UDP socket, shared by every WebRTC transport on it.

Datagrams are demultiplexed as RFC 7983 says: STUN Binding requests by the local ufrag in
USERNAME (the only way a new client can be recognised), everything else (DTLS, SRTP, SRTCP) by
the remote address, which is only learned from a request whose MESSAGE-INTEGRITY passed. Unknown
senders are dropped without an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from hubbub.wire.webrtc import stun
from shards.media.metrics import Counts


if TYPE_CHECKING:
    from shards.media.transport import Transport

__all__ = ["MAX_ADDRESSES", "UdpMux"]

log = logging.getLogger("hubbub.media.mux")

MAX_ADDRESSES = 65536
"""Routing entries across all transports (each transport keeps at most a few)."""


class UdpMux(asyncio.DatagramProtocol):
    """Routes datagrams of one UDP socket to ``Transport`` objects."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.by_ufrag: dict[str, Transport] = {}
        self.by_addr: dict[tuple[str, int], Transport] = {}
        self.sock: asyncio.DatagramTransport | None = None
        self.port = 0

    # ------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock = None

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("udp error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 4:
            return
        key = (addr[0], addr[1])
        first = data[0]
        if first < 4:
            t = None
            if stun.is_stun(data) and data[1] == 1 and data[0] == 0:  # Binding request
                local = stun.peek_username(data).partition(":")[0]
                t = self.by_ufrag.get(local)
            if t is None:
                t = self.by_addr.get(key)
            if t is None:
                self.counts.unroutable += 1
                return
            t.on_stun(data, key, time.monotonic())
            return
        t = self.by_addr.get(key)
        if t is None:
            self.counts.unroutable += 1
            return
        if 127 < first < 192:
            t.on_srtp(data)
        elif 19 < first < 64:
            t.link.feed(data)

    # ------------------------------------------------------------ routing
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.sock is not None:
            self.sock.sendto(data, addr)

    def add_transport(self, t: Transport) -> None:
        self.by_ufrag[t.ice.ufrag] = t

    def add_addr(self, addr: tuple[str, int], t: Transport) -> None:
        old = self.by_addr.get(addr)
        if old is not None and old is not t:
            # The same 3-tuple authenticated for a newer transport: it wins.
            old.forget_addr(addr)
        elif old is None and len(self.by_addr) >= MAX_ADDRESSES:
            return
        self.by_addr[addr] = t

    def remove_addr(self, addr: tuple[str, int], t: Transport) -> None:
        if self.by_addr.get(addr) is t:
            del self.by_addr[addr]

    def remove_transport(self, t: Transport) -> None:
        if self.by_ufrag.get(t.ice.ufrag) is t:
            del self.by_ufrag[t.ice.ufrag]
        for addr in list(t.ice.tuples):
            self.remove_addr(addr, t)
