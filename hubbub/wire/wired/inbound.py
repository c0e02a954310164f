"""Inbound Wired frames: envelope parsing and per-subject validation (protocol 0.3.0).

A client frame is a WebSocket text frame holding ``{"subject": <name>, "data": <payload>}``.
``parse_frame`` never raises: it returns a ``Message`` or a ``Rejected`` naming the error code
the adapter sends back (see ``outbound.error``). Every string is bounded by ``Limits`` so a
client cannot park megabytes of chat or names in the space state that Redis and every peer hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from hubbub.wire.wired.events import Message, Rejected


__all__ = [
    "INBOUND_SUBJECTS",
    "MEDIA_SUBJECTS",
    "Limits",
    "Message",
    "Rejected",
    "parse_frame",
]

# Error codes carried by the ``error`` message (documented in the README).
MALFORMED = "malformed"
UNKNOWN_SUBJECT = "unknown_subject"
INVALID_DATA = "invalid_data"
TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of inbound fields, in characters."""

    max_url: int = 2048
    """Space URI and avatar URL."""
    max_name: int = 128
    """Name and wallet address."""
    max_chat: int = 16384
    """One chat message."""
    max_media: int = 16384
    """Re-encoded JSON size of one WebRTC payload (RTP parameters, capabilities)."""


Result = Message | Rejected
_Check = Callable[[Any, Limits], str | None]
"""Returns None when ``data`` is valid, else the reason (code ``invalid_data``)."""


def _string(limit: Callable[[Limits], int], nullable: bool) -> _Check:
    def check(data: Any, limits: Limits) -> str | None:
        if data is None and nullable:
            return None
        if not isinstance(data, str):
            return "expected a string" + (" or null" if nullable else "")
        if len(data) > limit(limits):
            return f"longer than {limit(limits)} characters"
        return None
    return check


def _null(data: Any, limits: Limits) -> str | None:
    # The reference client sends null; an absent data field parses as null as well.
    return None


def _bool(data: Any, limits: Limits) -> str | None:
    return None if isinstance(data, bool) else "expected a boolean"


def _transport_type(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "expected an object"
    if data.get("type") not in ("producer", "consumer"):
        return 'type must be "producer" or "consumer"'
    return None


def _create_transport(data: Any, limits: Limits) -> str | None:
    return _transport_type(data)


def _connect_transport(data: Any, limits: Limits) -> str | None:
    reason = _transport_type(data)
    if reason:
        return reason
    dtls = data.get("dtlsParameters")
    if not isinstance(dtls, dict):
        return "dtlsParameters must be an object"
    role = dtls.get("role")
    if role is not None and role not in ("auto", "client", "server"):
        return "dtlsParameters.role must be auto, client or server"
    prints = dtls.get("fingerprints")
    if not isinstance(prints, list) or not prints:
        return "dtlsParameters.fingerprints must be a non-empty list"
    for fp in prints:
        if not (isinstance(fp, dict) and isinstance(fp.get("algorithm"), str)
                and isinstance(fp.get("value"), str)):
            return "each fingerprint needs string algorithm and value"
    return None


def _optional_list(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, list):
        return f"{name} must be a list"
    return None


def _rtp_capabilities(data: Any, limits: Limits) -> str | None:
    if not isinstance(data, dict):
        return "expected an RtpCapabilities object"
    return _optional_list(data, "codecs") or _optional_list(data, "headerExtensions")


def _produce(data: Any, limits: Limits) -> str | None:
    if not isinstance(data, dict):
        return "expected an RtpParameters object"
    if not isinstance(data.get("codecs"), list):
        return "codecs must be a list"
    return (_optional_list(data, "headerExtensions") or _optional_list(data, "encodings")
            or (None if data.get("mid") is None or isinstance(data.get("mid"), str)
                else "mid must be a string"))


def _produce_data(data: Any, limits: Limits) -> str | None:
    if not isinstance(data, dict):
        return "expected an SctpStreamParameters object"
    sid = data.get("streamId")
    if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < 65535:
        return "streamId must be an integer stream number"
    for name in ("maxPacketLifeTime", "maxRetransmits"):
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            return f"{name} must be a non-negative integer"
    ordered = data.get("ordered")
    if ordered is not None and not isinstance(ordered, bool):
        return "ordered must be a boolean"
    return None


_CHECKS: dict[str, _Check] = {
    # Any string names a space, the empty one included (the original's schema is a bare string).
    "join": _string(lambda lim: lim.max_url, nullable=False),
    "leave": _string(lambda lim: lim.max_url, nullable=False),
    "chat": _string(lambda lim: lim.max_chat, nullable=False),
    "set_grounded": _bool,
    "set_name": _string(lambda lim: lim.max_name, nullable=True),
    "set_avatar": _string(lambda lim: lim.max_url, nullable=True),
    "set_address": _string(lambda lim: lim.max_name, nullable=True),
    "get_router_rtp_capabilities": _null,
    "create_transport": _create_transport,
    "connect_transport": _connect_transport,
    "set_rtp_capabilities": _rtp_capabilities,
    "produce": _produce,
    "produce_data": _produce_data,
    "resume_audio": _null,
    # hubbub extension: opt in (true) or out (false) of server-batched position messages.
    "subscribe_positions": _bool,
}

INBOUND_SUBJECTS: frozenset[str] = frozenset(_CHECKS)
MEDIA_SUBJECTS: frozenset[str] = frozenset({
    "get_router_rtp_capabilities", "create_transport", "connect_transport",
    "set_rtp_capabilities", "produce", "produce_data", "resume_audio",
})
_TOO_LONG_MARK = "longer than"


def parse_frame(text: str | bytes, limits: Limits) -> Result:
    """Parse one text frame into a validated ``Message`` or a ``Rejected``."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Rejected(MALFORMED, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return Rejected(MALFORMED, 'frame must be a JSON object {"subject", "data"}')
    subject = obj.get("subject")
    if not isinstance(subject, str):
        return Rejected(MALFORMED, "subject must be a string")
    check = _CHECKS.get(subject)
    if check is None:
        shown = subject if len(subject) <= 64 else subject[:64] + "…"
        return Rejected(UNKNOWN_SUBJECT, f"unknown subject {shown!r}")
    data = obj.get("data")
    reason = check(data, limits)
    if reason is not None:
        code = TOO_LARGE if reason.startswith(_TOO_LONG_MARK) else INVALID_DATA
        return Rejected(code, f"{subject}: {reason}", subject)
    if subject in MEDIA_SUBJECTS and data is not None and limits.max_media:
        # Media payloads are relayed to a shard: bound them after parsing, not before.
        if len(orjson.dumps(data)) > limits.max_media:
            return Rejected(TOO_LARGE, f"{subject}: payload larger than {limits.max_media} bytes",
                            subject)
    return Message(subject, data)
