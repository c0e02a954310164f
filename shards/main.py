"""``hubbub shard``: one per core, pinned, owning slot k's slice of the RTC ports."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.role import role_main
from hubbub.runtime import Context, Service


__all__ = ["build_services", "main"]


async def build_services(ctx: Context) -> Sequence[Service]:
    """Relay and media services of this shard (``ctx.slot`` is leased, the CPU pinned)."""
    services: list[Service] = []
    from shards.relay.service import RelayService

    services.append(RelayService(ctx))
    from shards.media.service import MediaService

    services.append(MediaService(ctx))
    return services


def main(argv: Sequence[str]) -> int:
    return role_main("shard", argv, build_services)
