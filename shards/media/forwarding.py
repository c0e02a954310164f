"""Fan-out of one publisher packet to its subscribers: the shard's per-packet hot path.

Pure: no sockets and no clock. The caller passes ``now`` and a ``send(address, packet)``
callable, so tests feed packets in and read what would go out. Per packet the payload is copied
once into a template per header layout; per subscriber only its header is written over the
template, the template is protected by the subscriber's SRTP sender, and the encrypted bytes are
sent: no other object is made per forwarded copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from hubbub.wire.webrtc.rtp import OutboundStream, RtpInfo, packet_template


__all__ = ["Path", "Send", "Subscriber", "fan_out"]

Send = Callable[[Any, bytes], None]


class Sender(Protocol):
    def protect(self, packet: bytes | bytearray) -> bytes | None: ...


class Path(Protocol):
    """Where a subscriber's packets go: its SRTP sender and address, once both are known."""

    @property
    def sender(self) -> Sender | None: ...

    @property
    def addr(self) -> Any: ...


class Subscriber(Protocol):
    """One consumer of the publisher: its stream state, pause flag and path."""

    @property
    def paused(self) -> bool: ...

    @property
    def stream(self) -> OutboundStream: ...

    @property
    def transport(self) -> Path: ...


def fan_out(plain: bytes, info: RtpInfo, now: float, subscribers: Iterable[Subscriber],
            send: Send) -> tuple[int, int]:
    """Forward ``plain`` (a decrypted publisher packet read as ``info``) to every resumed
    subscriber; returns (packets sent, subscribers not ready yet)."""
    with_level: bytearray | None = None
    without: bytearray | None = None
    sent = not_ready = 0
    for sub in subscribers:
        if sub.paused:
            continue
        path = sub.transport
        sender, addr = path.sender, path.addr
        if sender is None or addr is None:
            not_ready += 1
            continue
        stream = sub.stream
        if stream.wants_level(info):
            if with_level is None:
                with_level = packet_template(plain, info, True)
            buf = with_level
        else:
            if without is None:
                without = packet_template(plain, info, False)
            buf = without
        stream.write(buf, info, now)
        packet = sender.protect(buf)
        if packet is not None:
            send(addr, packet)
            sent += 1
    return sent, not_ready
