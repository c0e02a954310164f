"""The shard's single UDP socket, shared by every WebRTC transport on it.

Datagrams are demultiplexed as RFC 7983 says: STUN Binding requests by the local ufrag in
USERNAME (the only way a new client can be recognised), everything else (DTLS, SRTP, SRTCP) by
the remote address, which is only learned from a request whose MESSAGE-INTEGRITY passed. Unknown
senders are dropped without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from hubbub.net import listen_socket
from hubbub.wire.webrtc import stun
from hubbub.wire.webrtc.framing import FramingError, Rfc4571Decoder, frame
from hubbub.wire.webrtc.ice import Key
from shards.media.metrics import Counts


__all__ = ["MAX_ADDRESSES", "Endpoint", "IceTcpConnection", "SendTo", "UdpMux"]

log = logging.getLogger("hubbub.media.mux")

SOCKET_BUFFER = 4 << 20
MAX_ADDRESSES = 65536
"""Routing entries across all transports (each transport keeps at most a few)."""
MAX_TCP = 4096
"""ICE-TCP connections per shard."""
TCP_AUTH_TIMEOUT = 10.0
"""Seconds an ICE-TCP connection may stay without a valid Binding request."""
TCP_WRITE_LIMIT = 1 << 20
"""Bytes queued on a slow ICE-TCP connection before packets are dropped (media is lossy)."""
BURST_LIMIT = 1024
"""Forwarded packets held for the end of the loop iteration; more are sent at once."""


SendTo = Callable[[bytes, Any], Any]


class Endpoint(Protocol):
    """What the mux needs of a transport: its packets by kind, and to hear of lost tuples."""

    @property
    def ufrag(self) -> str: ...

    @property
    def tuples(self) -> list[Key]: ...

    def on_stun(self, data: bytes, addr: tuple[str, int], now: float, key: Key) -> None: ...

    def on_srtp(self, data: bytes) -> None: ...

    def on_dtls(self, data: bytes) -> None: ...

    def forget_addr(self, addr: Key) -> None: ...



class UdpMux(asyncio.DatagramProtocol):
    """Routes datagrams of one UDP socket to transports (``Endpoint``)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.by_ufrag: dict[str, Endpoint] = {}
        self.by_addr: dict[Key, Endpoint] = {}
        self.tcp: dict[Key, IceTcpConnection] = {}
        self.sock: asyncio.DatagramTransport | None = None
        self._raw: socket.socket | None = None
        self.port = 0
        self._burst: list[bytes] = []
        self._burst_to: list[Key] = []
        self._burst_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, host: str, port: int) -> None:
        """Bind the shard's UDP socket (``::`` serves IPv4 too) and read it with the loop.

        Packets go out through the socket directly: one system call each, without the event
        loop's bookkeeping. One the kernel does not take at once is dropped and counted, as a
        router drops on a full queue.

        Raises:
            OSError: the address is taken or unusable.
        """
        sock = listen_socket(host, port, socket.SOCK_DGRAM, reuse_port=False)
        # Kept: asyncio's lookup of the running loop makes a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        try:
            await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._raw = sock

    # ------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]
        raw = transport.get_extra_info("socket")
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Bursts from many publishers must not overflow the kernel's default ~200 KiB.
            with contextlib.suppress(Exception):
                raw.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock = None
        self._raw = None

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("udp error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        key = (addr[0], addr[1])
        self.route(data, key, key)

    def route(self, data: bytes, addr: tuple[str, int], key: Key) -> None:
        """Hand one packet that arrived on tuple ``key`` from ``addr`` to its transport."""
        if len(data) < 4:
            return
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
            t.on_stun(data, addr, time.monotonic(), key)
            return
        t = self.by_addr.get(key)
        if t is None:
            self.counts.unroutable += 1
            return
        if 127 < first < 192:
            t.on_srtp(data)
        elif 19 < first < 64:
            t.on_dtls(data)

    # ------------------------------------------------------------ routing
    def send(self, key: Key, data: bytes) -> None:
        """Send one packet on a UDP tuple ``(ip, port)`` or an ICE-TCP connection."""
        if len(key) == 2:
            raw = self._raw
            if raw is not None:
                try:
                    raw.sendto(data, key)
                except OSError:
                    self.counts.drop_send += 1
            elif self.sock is not None:
                self.sock.sendto(data, key)
        else:
            conn = self.tcp.get(key)
            if conn is not None:
                conn.send(data)

    def sender_for(self, key: Key) -> tuple[SendTo, Any]:
        """The fastest way to send forwarded packets to ``key``, as ``(send, address)`` for
        ``send(data, address)``: for a UDP tuple, into the burst this loop iteration sends at
        its end (``send_later``), else a method that looks the tuple up per packet."""
        if len(key) == 2:
            return self.send_later, key
        return self._send_to, key

    def send_later(self, data: bytes, key: Key) -> None:
        """Send forwarded RTP ``data`` on UDP tuple ``key`` with the other packets of this loop
        iteration.

        The fan-outs of one iteration (the datagrams one poll of the socket brought) go out
        back to back: sends in one burst cost the kernel less than sends spread between
        encryptions, as receivers are woken once per burst rather than again and again.
        """
        burst = self._burst
        if not burst:
            loop = self._loop or asyncio.get_running_loop()
            self._burst_handle = loop.call_soon(self.flush)
        burst.append(data)
        self._burst_to.append(key)
        if len(burst) >= BURST_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send the packets held for this iteration now; those the kernel refuses are
        dropped and counted."""
        if self._burst_handle is not None:
            self._burst_handle.cancel()
            self._burst_handle = None
        burst, to = self._burst, self._burst_to
        if not burst:
            return
        self._burst, self._burst_to = [], []
        raw = self._raw
        if raw is None:
            return
        sendto = raw.sendto
        refused = 0
        for data, key in zip(burst, to, strict=True):
            try:
                sendto(data, key)
            except OSError:
                refused += 1
        if refused:
            # Counted as forwarded when queued; the kernel's refusals are drops after all.
            self.counts.drop_send += refused
            self.counts.rtp_out -= refused

    def _send_to(self, data: bytes, key: Key) -> None:
        self.send(key, data)

    def tcp_protocol(self) -> IceTcpConnection:
        """Protocol factory for the shard's ICE-TCP listener."""
        return IceTcpConnection(self)

    def sweep(self, now: float) -> None:
        """Close ICE-TCP connections that never authenticated."""
        for key, conn in list(self.tcp.items()):
            if key not in self.by_addr and now - conn.born > TCP_AUTH_TIMEOUT:
                conn.close()

    def add_transport(self, t: Endpoint) -> None:
        self.by_ufrag[t.ufrag] = t

    def add_addr(self, addr: Key, t: Endpoint) -> None:
        old = self.by_addr.get(addr)
        if old is not None and old is not t:
            # The same 3-tuple authenticated for a newer transport: it wins.
            old.forget_addr(addr)
        elif old is None and len(self.by_addr) >= MAX_ADDRESSES:
            return
        self.by_addr[addr] = t

    def remove_addr(self, addr: Key, t: Endpoint) -> None:
        if self.by_addr.get(addr) is t:
            del self.by_addr[addr]

    def remove_transport(self, t: Endpoint) -> None:
        if self.by_ufrag.get(t.ufrag) is t:
            del self.by_ufrag[t.ufrag]
        for addr in t.tuples:
            self.remove_addr(addr, t)


class IceTcpConnection(asyncio.Protocol):
    """One passive ICE-TCP connection (RFC 6544): RFC 4571 frames routed like datagrams."""

    def __init__(self, mux: UdpMux) -> None:
        self.mux = mux
        self.decoder = Rfc4571Decoder()
        self.transport: asyncio.Transport | None = None
        self.addr: tuple[str, int] = ("", 0)
        self.key: Key = ()
        self.born = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.addr = (str(peer[0]), int(peer[1]))
        self.key = ("tcp", self.addr[0], self.addr[1])
        if len(self.mux.tcp) >= MAX_TCP:
            transport.close()
            return
        self.mux.tcp[self.key] = self

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FramingError:
            self.close()
            return
        for packet in frames:
            self.mux.route(packet, self.addr, self.key)

    def send(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing() or t.get_write_buffer_size() > TCP_WRITE_LIMIT:
            return
        with contextlib.suppress(FramingError):
            t.write(frame(data))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.mux.tcp.get(self.key) is self:
            del self.mux.tcp[self.key]
        t = self.mux.by_addr.pop(self.key, None)
        if t is not None:
            t.forget_addr(self.key)
        self.transport = None
