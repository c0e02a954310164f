"""Sans-I/O server side of one RustDesk rendezvous TCP connection.

Framing (BytesCodec with a size cap), the optional opportunistic secure-TCP handshake, and
heartbeats. Bytes in -> plaintext payloads out; payloads in -> bytes to write. An empty payload
is a heartbeat.
"""

from __future__ import annotations

import enum

from hubbub.errors import RemoteProtocolError
from hubbub.wire.rustdesk.crypto import SecretChannel, ServerKeyExchange
from hubbub.wire.rustdesk.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import kind, parse


__all__ = ["KxState", "RendezvousStream"]


class KxState(enum.IntEnum):
    OFF = 0  # no handshake offered
    OFFERED = 1  # hello sent, waiting for the client's first frame
    PLAIN = 2  # the client ignored the offer (or spoke first)
    SECURE = 3  # encrypted from now on
    PENDING = 4  # hello held back until ``offer()``: a client that speaks first stays plain


class RendezvousStream:
    """One accepted TCP connection on the rendezvous port.

    Args:
        max_frame: largest accepted frame payload (security cap, not a protocol limit).
        kx: the server key exchange to offer, or None for plain connections.
        defer: hold the hello back until ``offer()``. Clients that want the handshake wait
            for it; every other client speaks first, and old clients that read the first
            frame as their answer must never see a KeyExchange, so a connection whose client
            has spoken stays plain.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME,
                 kx: ServerKeyExchange | None = None, defer: bool = False) -> None:
        self._dec = FrameDecoder(max_frame)
        self._kx = kx
        self._channel: SecretChannel | None = None
        self._out: list[bytes] = []
        if kx is None:
            self.state = KxState.OFF
        elif defer:
            self.state = KxState.PENDING
        else:
            self.state = KxState.OFFERED
            self._out.append(encode_frame(kx.hello()))

    def offer(self) -> None:
        """Send the deferred hello, unless the client has spoken already."""
        if self.state is KxState.PENDING and self._kx is not None:
            self.state = KxState.OFFERED
            self._out.append(encode_frame(self._kx.hello()))

    @property
    def secure(self) -> bool:
        return self.state is KxState.SECURE

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send(self, payload: bytes) -> None:
        """Queue one message payload (encrypted once the handshake is done)."""
        if self._channel is not None:
            payload = self._channel.seal(payload)
        self._out.append(encode_frame(payload))

    def send_heartbeat(self) -> None:
        self._out.append(b"\x00")

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed stream bytes; return plaintext payloads (``b""`` = heartbeat).

        Raises:
            RemoteProtocolError: oversized frame, bad handshake, or a frame that fails to decrypt.
        """
        out: list[bytes] = []
        if data and self.state is KxState.PENDING:
            self.state = KxState.PLAIN
        for frame in self._dec.feed(data):
            if self._channel is not None:
                out.append(self._channel.open(frame))
                continue
            if len(frame) <= 1:
                out.append(frame)
                continue
            msg = parse(frame)  # undecodable frames are the caller's business
            if msg is not None and kind(msg) == "key_exchange":
                if self.state is not KxState.OFFERED or self._kx is None:
                    raise RemoteProtocolError("unexpected KeyExchange")
                self._channel = self._kx.accept(msg.key_exchange)
                self.state = KxState.SECURE
                continue
            if self.state is KxState.OFFERED:
                self.state = KxState.PLAIN
            out.append(frame)
        return out
