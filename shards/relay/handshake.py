"""The first message of a relay connection: ``RequestRelay`` within the timeout. Sans-I/O.

A TCP half sends one BytesCodec frame, a WebSocket half an HTTP upgrade and one binary message.
Whatever follows the first message (the peers' own traffic, sent before pairing) is kept as
``leftover`` and forwarded once the pair is formed, or travels with the socket to another shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubbub.errors import FrameTooLarge, RemoteProtocolError
from hubbub.wire.rustdesk.framing import MAX_PAYLOAD, FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import kind, parse
from shards.relay.ws import Handshake, HandshakeDone, WsReader


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

    Work per call is proportional to the new bytes only, so a peer trickling a large first frame
    byte by byte costs no more than sending it at once.
    """

    def __init__(self, cap: int = FIRST_MESSAGE_CAP) -> None:
        self._cap = cap
        self._total = 0
        # The uncapped decoder never raises and never pre-allocates (it holds only bytes we
        # read); it also splits whatever follows the first frame, which the peers may already
        # have sent and which may be far larger than the cap. The capped one, fed the same
        # bytes while no frame is complete, refuses a forged first header at once.
        self._all = FrameDecoder(MAX_PAYLOAD)
        self._capped: FrameDecoder | None = FrameDecoder(cap)

    def feed(self, data: bytes) -> Hello | None:
        """None until the first frame is complete.

        Raises:
            Refused: ``too_large``, ``garbage`` or ``wrong_message``.
        """
        self._total += len(data)
        frames = self._all.feed(data)
        if not frames:
            if self._capped is not None:
                try:
                    self._capped.feed(data)
                except FrameTooLarge:
                    raise Refused("too_large", "first frame above the cap") from None
            if self._total > self._cap + 4:
                raise Refused("too_large", "first frame above the cap")
            return None
        self._capped = None
        first = frames[0]
        if len(first) > self._cap:
            raise Refused("too_large", "first frame above the cap")
        leftover = b"".join(encode_frame(f) for f in frames[1:]) + self._all.pending()
        return parse_hello(first, leftover)


class WsFirstMessage:
    """HTTP upgrade, then collect bytes until the first binary message."""

    def __init__(self, cap: int = FIRST_MESSAGE_CAP) -> None:
        self._handshake: Handshake | None = Handshake()
        self.done: HandshakeDone | None = None
        self._reader = WsReader(cap)

    def feed(self, data: bytes) -> tuple[bytes, Hello | None]:
        """Returns (bytes to send, hello or None).

        Raises:
            ws.HandshakeError: a bad upgrade (its ``response`` should be sent).
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
            msgs = self._reader.feed(data, limit=1)
        except FrameTooLarge:
            raise Refused("too_large", "first message above the cap") from None
        except RemoteProtocolError as exc:
            raise Refused("garbage", str(exc)) from None
        out += b"".join(self._reader.to_send)
        self._reader.to_send.clear()
        if self._reader.closed:
            raise Refused("closed", "closed before RequestRelay")
        if not msgs:
            return out, None
        return out, parse_hello(msgs[0], self._reader.pending())
