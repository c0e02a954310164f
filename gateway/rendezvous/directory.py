"""Who is where: the gateway directory (owner tokens -> processes) and the relay choice's inputs.

The directory and the least-loaded relay host come from the registry's presence records,
refreshed every two seconds (never per request); the run-time relay settings are reloaded on
their change news and every six seconds; configured relays that refuse TCP are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway.rendezvous.logic import RelayChoice, choose_relay_host, split_host_port
from gateway.rendezvous.store import Store
from hubbub.errors import RegistryError
from registry import ProcessRecord, Registry


__all__ = ["DEFAULT_RELAY_PORT", "Directory"]

DEFAULT_RELAY_PORT = 21117
"""What clients assume for a relay address without a port."""


class Directory:
    """Gateway records by owner token, and the refresh loops behind ``RelayChoice``."""

    def __init__(self, registry: Registry, store: Store, relays: RelayChoice) -> None:
        self.registry = registry
        self.store = store
        self.relays = relays
        self.gateways: dict[str, ProcessRecord] = {}
        self._gateways_at = 0.0

    async def resolve(self, token: str) -> ProcessRecord | None:
        """The live gateway whose id ends in ``token`` (directory refreshed on a miss)."""
        rec = self.gateways.get(token)
        if rec is None and time.monotonic() - self._gateways_at > 0.2:
            with contextlib.suppress(RegistryError):
                self._refresh(await self.registry.processes())
            rec = self.gateways.get(token)
        return rec

    def _refresh(self, procs: list[ProcessRecord]) -> None:
        self.gateways = {p.id.rsplit(":", 1)[-1]: p for p in procs if p.role == "gateway"}
        self._gateways_at = time.monotonic()

    async def load_settings(self) -> None:
        """Raises:
            RegistryError: Redis did not answer.
        """
        self.relays.apply(await self.store.admin_settings())

    async def directory_loop(self) -> None:
        """Every two seconds the gateway directory and the least-loaded relay host; every six
        the admin settings."""
        ticks = 0
        while True:
            try:
                procs = await self.registry.processes()
                self._refresh(procs)
                shards = [p for p in procs if p.role == "shard"]
                self.relays.auto = choose_relay_host(
                    [rec.info | {"public_ip": rec.public_ip, "host": rec.host,
                                 "state": rec.state} for rec in shards],
                    DEFAULT_RELAY_PORT)
            except RegistryError:
                pass
            await asyncio.sleep(2.0)
            ticks += 1
            if ticks % 3 == 0:
                with contextlib.suppress(RegistryError):
                    await self.load_settings()

    async def probe_loop(self) -> None:
        """With several configured relays, skip those that refuse TCP (checked every 3 s)."""
        while True:
            await asyncio.sleep(3.0)
            servers = self.relays.servers
            if len(servers) < 2:
                self.relays.down = set()
                continue
            results = await asyncio.gather(*(self._reachable(s) for s in servers))
            self.relays.down = {s for s, ok in zip(servers, results, strict=True) if not ok}

    @staticmethod
    async def _reachable(server: str) -> bool:
        host, port = split_host_port(server, DEFAULT_RELAY_PORT)
        try:
            async with asyncio.timeout(3.0):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError, ValueError):
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
