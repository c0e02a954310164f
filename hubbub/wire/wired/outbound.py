"""Outbound Wired frames (protocol 0.3.0): one builder per host → client subject.

Every builder returns the UTF-8 JSON text of the frame as ``bytes`` so a broadcast is serialised
once and the same bytes go to every receiver (sent as a WebSocket *text* frame). Key order and
shapes follow the reference host exactly: ``producer_id`` and ``data_producer_id`` carry a bare
string, ``player_joined`` carries ``beforeYou`` only for players already present.
"""

from __future__ import annotations

from typing import Any

import orjson


__all__ = [
    "OUTBOUND_SUBJECTS",
    "data_producer_id",
    "encode",
    "error",
    "join_success",
    "player_address",
    "player_avatar",
    "player_chat",
    "player_grounded",
    "player_joined",
    "player_left",
    "player_name",
    "producer_id",
]

OUTBOUND_SUBJECTS: frozenset[str] = frozenset({
    "join_success", "player_joined", "player_left", "player_chat", "player_grounded",
    "player_name", "player_avatar", "player_address", "router_rtp_capabilities",
    "transport_created", "producer_id", "data_producer_id", "create_consumer",
    "create_data_consumer",
})


def encode(subject: str, data: Any) -> bytes:
    """Any ``{"subject", "data"}`` frame (used for replies relayed from a media shard)."""
    return orjson.dumps({"subject": subject, "data": data})


def join_success(uri: str, player_id: int) -> bytes:
    return encode("join_success", {"uri": uri, "playerId": player_id})


def player_joined(player_id: int, name: str | None, avatar: str | None, address: str | None,
                  before_you: bool = False) -> bytes:
    data: dict[str, Any] = {"playerId": player_id, "name": name, "avatar": avatar,
                            "address": address}
    if before_you:
        data["beforeYou"] = True
    return encode("player_joined", data)


def player_left(player_id: int) -> bytes:
    return encode("player_left", {"playerId": player_id})


def player_chat(player_id: int, text: str, timestamp_ms: int) -> bytes:
    return encode("player_chat", {"playerId": player_id, "text": text, "timestamp": timestamp_ms})


def player_grounded(player_id: int, grounded: bool) -> bytes:
    return encode("player_grounded", {"playerId": player_id, "grounded": grounded})


def player_name(player_id: int, name: str | None) -> bytes:
    return encode("player_name", {"playerId": player_id, "name": name})


def player_avatar(player_id: int, avatar: str | None) -> bytes:
    return encode("player_avatar", {"playerId": player_id, "avatar": avatar})


def player_address(player_id: int, address: str | None) -> bytes:
    return encode("player_address", {"playerId": player_id, "address": address})


def producer_id(producer: str) -> bytes:
    return encode("producer_id", producer)


def data_producer_id(producer: str) -> bytes:
    return encode("data_producer_id", producer)


def error(code: str, message: str, subject: str | None = None) -> bytes:
    """hubbub's explicit error message; clients of the original host ignore unknown subjects."""
    return encode("error", {"code": code, "message": message, "subject": subject})
