"""Events a spaces connection hands to its adapter (frozen; nothing mutable leaks out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


__all__ = ["CloseConnection", "Event", "LocationRecord", "Message", "Rejected", "ResumeAudio"]


@dataclass(frozen=True, slots=True)
class Message:
    """A valid inbound message; ``data`` has the shape its subject demands."""

    subject: str
    data: Any


@dataclass(frozen=True, slots=True)
class Rejected:
    """An inbound frame that must be answered with an ``error`` message."""

    code: str
    message: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class LocationRecord:
    """A 21-byte location record sent as a binary frame (byte 0 not yet trusted)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ResumeAudio:
    """Time to relay one ``resume_audio`` (bursts of them are coalesced)."""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The client kept misbehaving: close with ``code`` after sending what is queued."""

    code: int
    reason: str


Event = Message | Rejected | LocationRecord | ResumeAudio | CloseConnection
