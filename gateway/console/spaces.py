"""The spaces side of the console: spaces with their players and media shard, disconnecting a
player (through the inbox of the gateway holding its socket)."""

from __future__ import annotations

from typing import Any

from gateway.console.scan import HOLE, scan_parts
from gateway.spaces.store import Member, SpaceStore
from hubbub.contracts.spaces import KickPlayer, KickReply
from hubbub.errors import ContractError, RegistryError
from registry import Registry


__all__ = ["kick_player", "space_players", "spaces_view"]

MAX_SPACES = 500
LIST_BUDGET = 0.5
"""Seconds the space listing may scan keys for."""


def _store(registry: Registry) -> SpaceStore:
    return SpaceStore(registry)


async def spaces_view(registry: Registry) -> list[dict[str, Any]]:
    """Spaces with players, most players first (at most ``MAX_SPACES``).

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    store = _store(registry)
    found, _, _ = await scan_parts(registry, store.members_key(HOLE), limit=MAX_SPACES,
                                   budget=LIST_BUDGET, op="console_spaces")
    uris = sorted(set(found))[:MAX_SPACES]
    if not uris:
        return []
    async with registry.guard("console_spaces"):
        async with registry.redis.pipeline(transaction=False) as p:
            for uri in uris:
                p.hlen(store.members_key(uri))
                p.get(store.shard_key(uri))
            res = await p.execute()
    out: list[dict[str, Any]] = []
    for i, uri in enumerate(uris):
        players, shard = int(res[2 * i]), res[2 * i + 1]
        if players:
            out.append({"uri": uri, "players": players,
                        "shard": shard.decode() if isinstance(shard, bytes) else None})
    out.sort(key=lambda s: (-int(s["players"]), str(s["uri"])))
    return out


async def _members(registry: Registry, uri: str) -> list[Member]:
    async with registry.guard("console_spaces"):
        raw: dict[Any, Any] = await registry.redis.hgetall(_store(registry).members_key(uri))
    members = [Member.from_json(int(k), v) for k, v in raw.items() if k.isdigit()]
    return sorted((m for m in members if m is not None), key=lambda m: m.player_id)


async def space_players(registry: Registry, uri: str) -> list[dict[str, Any]]:
    """Raises: RegistryUnavailable: Redis did not answer."""
    return [{"player_id": m.player_id, "name": m.name, "avatar": m.avatar,
             "address": m.address, "grounded": m.grounded, "gateway": m.gateway}
            for m in await _members(registry, uri)]


async def kick_player(registry: Registry, uri: str, player_id: int) -> tuple[bool, str]:
    """Close the socket of player ``player_id`` of ``uri`` (it leaves every space it is in)."""
    member = next((m for m in await _members(registry, uri) if m.player_id == player_id), None)
    if member is None:
        return False, f"no player {player_id} in {uri}"
    try:
        done = (await registry.request(member.gateway, KickPlayer(member.socket),
                                       reply=KickReply, timeout=2.0)).done
    except (RegistryError, ContractError) as exc:
        return False, f"gateway {member.gateway} did not answer: {exc}"
    return bool(done), (f"player {player_id} disconnected" if done
                        else f"player {player_id} was already gone")
