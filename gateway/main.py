"""``hubbub gateway``: the stateless signalling process."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.role import role_main
from hubbub.runtime import Context, Service


__all__ = ["build_services", "main"]


async def build_services(ctx: Context) -> Sequence[Service]:
    """Every capability a gateway serves; each binds its own ports with SO_REUSEPORT."""
    services: list[Service] = []
    from gateway.rendezvous.service import RendezvousService

    services.append(RendezvousService(ctx))
    from gateway.spaces.service import SpacesService

    services.append(SpacesService(ctx))
    if ctx.cfg.console_port:
        from gateway.console.service import ConsoleService

        services.append(ConsoleService(ctx))
    return services


def main(argv: Sequence[str]) -> int:
    return role_main("gateway", argv, build_services)
