"""Admission of one spaces socket's messages, sans I/O: parsing, rate limit, abuse handling.

Feed every WebSocket message with ``receive(message, now)`` and act on ``events_received()``:

* ``Message`` — a valid subject with its data;
* ``LocationRecord`` — a 21-byte binary record (the batched-position extension);
* ``ResumeAudio`` — relay one ``resume_audio`` now. The reference client sends one per consumer
  it gets (hundreds when joining a full space); they are idempotent, so they bypass the rate
  limit and are coalesced to at most one per ``resume_gap``, the last one never lost (a trailing
  one is due at ``get_timer()``; call ``handle_timer(now)`` then);
* ``Rejected`` — send an ``error`` message;
* ``CloseConnection`` — the client keeps misbehaving: close after sending what is queued.

Errors the adapter finds itself (``not_joined``, ``space_full``…) go through ``reject`` so they
count as offences too. Nothing here raises; time is an input.
"""

from __future__ import annotations

import re

from hubbub.limits import TokenBucket
from hubbub.wire.wired.events import (
    CloseConnection,
    Event,
    LocationRecord,
    Rejected,
    ResumeAudio,
)
from hubbub.wire.wired.inbound import Limits, parse_frame
from hubbub.wire.wired.positions import RECORD_SIZE
from hubbub.wire.wired.strikes import Strikes


__all__ = ["CLOSE_POLICY", "Admission"]

CLOSE_POLICY = 1008
# Exactly what the reference client's JSON.stringify produces (other spellings take the normal,
# rate-limited path and are coalesced all the same).
_RESUME = re.compile(r'\s*\{\s*"subject"\s*:\s*"resume_audio"\s*(,\s*"data"\s*:\s*null\s*)?\}\s*')
_RESUME_MAX = 64


class Admission:
    """Admission state of one spaces socket.

    Args:
        limits: field size limits.
        rate: messages per second allowed (token bucket); location records count.
        burst: messages allowed at once above ``rate``.
        strike_limit: offences (bad or excess messages) tolerated within ``strike_window``
            seconds before the connection is closed with 1008.
        resume_gap: seconds between two ``ResumeAudio`` events.
    """

    def __init__(self, limits: Limits, rate: float, burst: float, strike_limit: int = 50,
                 strike_window: float = 10.0, resume_gap: float = 0.1) -> None:
        self.limits = limits
        self.bucket = TokenBucket(rate, burst)
        self.strikes = Strikes(strike_limit, strike_window)
        self.resume_gap = resume_gap
        self.closed = False
        self._events: list[Event] = []
        self._last_resume = -1e18
        self._resume_due: float | None = None

    # -------------------------------------------------------------- input
    def receive(self, message: str | bytes, now: float) -> None:
        """One WebSocket message (text or binary)."""
        if self.closed:
            return
        if isinstance(message, str) and len(message) <= _RESUME_MAX and _RESUME.fullmatch(message):
            self._resume(now)
            return
        if not self.bucket.allow(now):
            if self.strikes.hit(now):
                self._close("rate limit exceeded")
            elif self.strikes.should_notify(now):
                self._events.append(Rejected("rate_limited", "too many messages; slow down"))
            return
        if isinstance(message, bytes):
            if len(message) != RECORD_SIZE:
                self.reject("invalid_data",
                            f"a location record is {RECORD_SIZE} bytes, got {len(message)}", None,
                            now)
            else:
                self._events.append(LocationRecord(bytes(message)))
            return
        parsed = parse_frame(message, self.limits)
        if isinstance(parsed, Rejected):
            self.reject(parsed.code, parsed.message, parsed.subject, now)
        elif parsed.subject == "resume_audio":
            self._resume(now)
        else:
            self._events.append(parsed)

    def reject(self, code: str, message: str, subject: str | None, now: float) -> None:
        """Answer with an ``error`` message and count the offence."""
        if self.closed:
            return
        self._events.append(Rejected(code, message, subject))
        if self.strikes.hit(now):
            self._close("too many invalid messages")

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (a trailing ``resume_audio``), or None."""
        return None if self.closed else self._resume_due

    def handle_timer(self, now: float) -> None:
        if self._resume_due is not None and now >= self._resume_due and not self.closed:
            self._resume_due = None
            self._last_resume = now
            self._events.append(ResumeAudio())

    # ------------------------------------------------------------- output
    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ helpers
    def _resume(self, now: float) -> None:
        if self._resume_due is not None:
            return
        if now - self._last_resume >= self.resume_gap:
            self._last_resume = now
            self._events.append(ResumeAudio())
        else:
            self._resume_due = self._last_resume + self.resume_gap

    def _close(self, reason: str) -> None:
        self.closed = True
        self._resume_due = None
        self._events.append(CloseConnection(CLOSE_POLICY, reason))
