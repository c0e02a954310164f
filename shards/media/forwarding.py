"""Fan-out of one publisher packet to its subscribers: the shard's per-packet hot path.

Pure: no sockets and no clock. The caller passes ``now``, and each subscriber's path brings its
protect and send callables, so tests feed packets in and read what would go out. Per packet the
payload is copied once into a template per header layout; per subscriber only its header is
written over the template, the template is protected by the subscriber's SRTP sender, and the
encrypted bytes are sent: no other object is made per forwarded copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from hubbub.wire.webrtc.rtp import OutboundStream, PacketCopies, RtpInfo


__all__ = ["Output", "Path", "Subscriber", "fan_out"]

Output = tuple[Callable[[bytes | bytearray], bytes | None], Callable[[bytes, Any], Any], Any]
"""A ready subscriber path: (SRTP protect, send(packet, address), address)."""


class Path(Protocol):
    """Where a subscriber's packets go; ``out`` is None until its keys and address are known."""

    @property
    def out(self) -> Output | None: ...


class Subscriber(Protocol):
    """One consumer of the publisher: its stream state, pause flag and path."""

    @property
    def paused(self) -> bool: ...

    @property
    def stream(self) -> OutboundStream: ...

    @property
    def transport(self) -> Path: ...


def fan_out(plain: bytes, info: RtpInfo, now: float,
            subscribers: Iterable[Subscriber]) -> tuple[int, int, int]:
    """Forward ``plain`` (a decrypted publisher packet read as ``info``) to every resumed
    subscriber; returns (packets sent, subscribers not ready yet, sends the kernel refused)."""
    copies = PacketCopies(plain, info)
    sent = not_ready = refused = 0
    for sub in subscribers:
        if sub.paused:
            continue
        out = sub.transport.out
        if out is None:
            not_ready += 1
            continue
        buf = sub.stream.write(copies, now)
        protect, send, addr = out
        packet = protect(buf)
        if packet is None:
            continue
        try:
            send(packet, addr)
        except OSError:  # the socket's buffer is full: drop, as a router would
            refused += 1
        else:
            sent += 1
    return sent, not_ready, refused
