"""The first message of a relay connection: ``RequestRelay`` within the timeout. Sans-I/O.

A TCP half sends one BytesCodec frame, a WebSocket half an HTTP upgrade and one binary message.
Whatever follows the first message (the peers' own traffic, sent before pairing) is kept as
``leftover``, byte for byte as received, and forwarded once the pair is formed, or travels with
the socket to another shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubbub.errors import FrameTooLarge, RemoteProtocolError
from hubbub.wire.relay.reframe import Collect, TcpDecoder
from hubbub.wire.rustdesk.messages import kind, parse
from hubbub.wire.websocket import Handshake, HandshakeDone, WsDecoder


__all__ = [
    "FIRST_MESSAGE_CAP",
    "Hello",
    "Refused",
    "TcpFirstMessage",
    "WsFirstMessage",
    "check_hello",
    "parse_hello",
]

FIRST_MESSAGE_CAP = 64 * 1024
"""A RequestRelay is a few hundred bytes; a forged header must not make us buffer more."""


class Refused(RemoteProtocolError):
    """The connection is closed without a reply; ``reason`` is the metrics label."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True)
class Hello:
    """What the relay needs from a half's ``RequestRelay``."""

    uuid: str
    licence_key: str
    peer_id: str
    leftover: bytes


def parse_hello(payload: bytes, leftover: bytes) -> Hello:
    """Read a first message.

    Raises:
        Refused: ``garbage`` (not a RendezvousMessage) or ``wrong_message``.
    """
    msg = parse(payload)
    if msg is None:
        raise Refused("garbage", "first message is not a RendezvousMessage")
    if kind(msg) != "request_relay":
        raise Refused("wrong_message", f"first message is {kind(msg) or 'empty'}")
    rr = msg.request_relay
    return Hello(rr.uuid, rr.licence_key, rr.id, leftover)


def check_hello(hello: Hello, key: str | None) -> None:
    """hbbr's checks: the licence key when one is configured, then a non-empty uuid.

    Raises:
        Refused: ``key`` or ``no_uuid``.
    """
    if key and hello.licence_key != key:
        raise Refused("key", "licence key mismatch")
    if not hello.uuid:
        raise Refused("no_uuid", "empty uuid")
    if len(hello.uuid) > 256:
        raise Refused("garbage", "uuid too long")


class TcpFirstMessage:
    """Collect bytes until the first BytesCodec frame is complete.

    Everything behind that frame is kept exactly as received: from then on a TCP half is an
    opaque byte stream (a pair re-frames it only when its other side speaks WebSocket). Work per
    call is proportional to the new bytes only, so a peer trickling a large first frame byte by
    byte costs no more than sending it at once; a header announcing more than the cap is refused
    before any payload is kept.
    """

    def __init__(self, cap: int = FIRST_MESSAGE_CAP) -> None:
        self._sink = Collect()
        self._decoder = TcpDecoder(self._sink, cap)

    def feed(self, data: bytes) -> Hello | None:
        """None until the first frame is complete.

        Raises:
            Refused: ``too_large``, ``garbage`` or ``wrong_message``.
        """
        try:
            used = self._decoder.feed(data, stop=True)
        except FrameTooLarge:
            raise Refused("too_large", "first frame above the cap") from None
        if not self._sink.messages:
            return None
        return parse_hello(self._sink.messages[0], data[used:])


class WsFirstMessage:
    """HTTP upgrade, then collect bytes until the first binary message."""

    def __init__(self, cap: int = FIRST_MESSAGE_CAP) -> None:
        self._handshake: Handshake | None = Handshake()
        self.done: HandshakeDone | None = None
        self._sink = Collect()
        self._decoder = WsDecoder(self._sink, cap)

    def feed(self, data: bytes) -> tuple[bytes, Hello | None]:
        """Returns (bytes to send, hello or None).

        Raises:
            websocket.HandshakeError: a bad upgrade (its ``response`` should be sent).
            Refused: ``too_large``, ``garbage``, ``wrong_message`` or ``closed``.
        """
        out = b""
        if self._handshake is not None:
            done = self._handshake.feed(data)
            if done is None:
                return b"", None
            self._handshake = None
            self.done = done
            out = done.response
            data = done.leftover
        try:
            used = self._decoder.feed(data, stop=True)
        except FrameTooLarge:
            raise Refused("too_large", "first message above the cap") from None
        except RemoteProtocolError as exc:
            raise Refused("garbage", str(exc)) from None
        out += b"".join(self._decoder.replies())
        if self._decoder.closed:
            raise Refused("closed", "closed before RequestRelay")
        if not self._sink.messages:
            return out, None
        return out, parse_hello(self._sink.messages[0], data[used:])
