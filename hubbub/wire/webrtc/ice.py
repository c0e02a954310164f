"""ICE-lite responder (RFC 8445 §2.5) for one transport, sans-I/O.

The server never sends checks: it answers the client's authenticated Binding requests and selects
the address of the latest nominated one (USE-CANDIDATE, or the first valid check when the client
nominates aggressively later). Consent freshness: a transport that hears no valid request for
``consent_timeout`` seconds disconnects, as mediasoup's server side does.

Addresses are learned only after MESSAGE-INTEGRITY passes, and at most ``max_tuples`` of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from hubbub.wire.webrtc import stun


__all__ = ["Addr", "IceDisconnected", "Key", "IceEvent", "IceLite", "IceSelected", "IceState",
           "TupleAdded", "TupleRemoved"]

Addr = tuple[str, int]
Key = tuple[Any, ...]
"""A remote tuple: ``(ip, port)`` for UDP, ``("tcp", ip, port)`` for an ICE-TCP connection."""


class IceState(enum.IntEnum):
    NEW = 0
    CONNECTED = 1
    DISCONNECTED = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class IceSelected:
    """The client nominated ``addr``: media goes there from now on."""

    addr: Key


@dataclass(frozen=True, slots=True)
class IceDisconnected:
    """No valid check for ``consent_timeout`` seconds."""


@dataclass(frozen=True, slots=True)
class TupleAdded:
    """A new authenticated remote address; the mux may route it to this transport."""

    addr: Key


@dataclass(frozen=True, slots=True)
class TupleRemoved:
    addr: Key


IceEvent = IceSelected | IceDisconnected | TupleAdded | TupleRemoved


class IceLite:
    """ICE-lite state of one transport.

    Args:
        ufrag: local username fragment (the part before ``:`` in the client's USERNAME).
        password: local ICE password (keys MESSAGE-INTEGRITY both ways).
        consent_timeout: seconds without a valid check before disconnecting.
        max_tuples: remote addresses remembered (oldest evicted first).
    """

    def __init__(self, ufrag: str, password: str, consent_timeout: float = 30.0,
                 max_tuples: int = 8) -> None:
        self.ufrag = ufrag
        self.password = password
        self.consent_timeout = consent_timeout
        self.max_tuples = max_tuples
        self.state = IceState.NEW
        self.selected: Key | None = None
        self.tuples: dict[Key, float] = {}
        self._events: list[IceEvent] = []
        self._last_valid = 0.0
        self.rejected = 0

    def events_received(self) -> list[IceEvent]:
        events, self._events = self._events, []
        return events

    def receive_stun(self, data: bytes, addr: Addr, now: float,
                     key: Key | None = None) -> bytes | None:
        """Handle one STUN message from ``addr``; returns the response to send back, if any.

        Args:
            data: the STUN message.
            addr: the sender's address (echoed in XOR-MAPPED-ADDRESS).
            now: current time.
            key: the tuple this arrived on, when not plain UDP from ``addr``.
        """
        if self.state is IceState.CLOSED:
            return None
        try:
            msg = stun.parse(data)
        except stun.StunError:
            self.rejected += 1
            return None
        if msg.type == stun.BINDING_INDICATION:
            return None  # keepalive, nothing to answer
        if msg.type != stun.BINDING_REQUEST:
            self.rejected += 1
            return None
        local, _, _remote = msg.username.partition(":")
        if local != self.ufrag or not msg.check_integrity(self.password):
            self.rejected += 1
            return None
        self._last_valid = now
        tup = addr if key is None else key
        if tup in self.tuples:
            del self.tuples[tup]  # re-inserted below: the dict stays in recency order
        else:
            if len(self.tuples) >= self.max_tuples:
                oldest = next((a for a in self.tuples if a != self.selected), None)
                if oldest is not None:
                    del self.tuples[oldest]
                    self._events.append(TupleRemoved(oldest))
            self._events.append(TupleAdded(tup))
        self.tuples[tup] = now
        nominated = stun.ATTR_USE_CANDIDATE in msg.attrs
        if self.selected is None or (nominated and tup != self.selected):
            self.selected = tup
            self.state = IceState.CONNECTED
            self._events.append(IceSelected(tup))
        elif self.state is IceState.DISCONNECTED:
            self.state = IceState.CONNECTED
            self._events.append(IceSelected(self.selected))
        return stun.binding_success(msg.txid, addr, self.password)

    def get_timer(self) -> float | None:
        if self.state is not IceState.CONNECTED:
            return None
        return self._last_valid + self.consent_timeout

    def handle_timer(self, now: float) -> None:
        """Expire tuples unheard for ``consent_timeout``; disconnect when the path is silent."""
        for tup, seen in list(self.tuples.items()):
            if tup != self.selected and now - seen >= self.consent_timeout:
                del self.tuples[tup]
                self._events.append(TupleRemoved(tup))
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            self.state = IceState.DISCONNECTED
            self._events.append(IceDisconnected())

    def forget(self, tup: Key) -> None:
        """The tuple is gone below ICE (its TCP connection closed, or a newer transport took
        it): drop it without an event; when it was the selected path, the next valid check
        selects a path again."""
        self.tuples.pop(tup, None)
        if self.selected == tup:
            self.selected = None

    def close(self) -> None:
        if self.state is IceState.CLOSED:
            return
        self.state = IceState.CLOSED
        for addr in self.tuples:
            self._events.append(TupleRemoved(addr))
        self.tuples.clear()
        self.selected = None
