"""Who is where: the gateway directory (owner tokens -> processes) and the relay hint.

A mixin of ``RendezvousService``. The directory and the least-loaded relay host come from the
registry's presence records, refreshed every two seconds (never per request); configured relays
(``-r`` or ``hubbub admin rs``) are served round robin, skipping ones that refuse TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway.rendezvous.logic import choose_relay_host, split_host_port
from hubbub.errors import RegistryError
from registry import ProcessRecord, Registry


__all__ = ["DEFAULT_RELAY_PORT", "Directory"]

DEFAULT_RELAY_PORT = 21117
"""What clients assume for a relay address without a port."""


class Directory:
    """Gateway directory and relay choice; attributes are provided by ``RendezvousService``."""

    registry: Registry
    gateways: dict[str, ProcessRecord]
    _gateways_at: float
    relay_servers: tuple[str, ...]
    relays_down: set[str]
    auto_relay: str
    _rr: int

    async def _load_admin(self) -> None:
        raise NotImplementedError

    async def resolve(self, token: str) -> ProcessRecord | None:
        """The live gateway whose id ends in ``token`` (directory refreshed on a miss)."""
        rec = self.gateways.get(token)
        if rec is None and time.monotonic() - self._gateways_at > 0.2:
            with contextlib.suppress(RegistryError):
                self._refresh_gateways(await self.registry.processes())
            rec = self.gateways.get(token)
        return rec

    def _refresh_gateways(self, procs: list[ProcessRecord]) -> None:
        self.gateways = {p.id.rsplit(":", 1)[-1]: p for p in procs if p.role == "gateway"}
        self._gateways_at = time.monotonic()

    async def _directory_loop(self) -> None:
        """Every two seconds the gateway directory and the least-loaded relay host; every six
        the admin settings."""
        ticks = 0
        while True:
            try:
                procs = await self.registry.processes()
                self._refresh_gateways(procs)
                shards = [p for p in procs if p.role == "shard"]
                self.auto_relay = choose_relay_host(
                    [rec.info | {"public_ip": rec.public_ip, "host": rec.host,
                                 "state": rec.state} for rec in shards],
                    DEFAULT_RELAY_PORT)
            except RegistryError:
                pass
            await asyncio.sleep(2.0)
            ticks += 1
            if ticks % 3 == 0:
                with contextlib.suppress(RegistryError):
                    await self._load_admin()

    def relay_server(self) -> str:
        """Round robin over the reachable configured relays, else the least-loaded relay host."""
        servers = [s for s in self.relay_servers if s not in self.relays_down] or list(
            self.relay_servers)
        if servers:
            self._rr = (self._rr + 1) % len(servers)
            return servers[self._rr]
        return self.auto_relay

    async def _probe_loop(self) -> None:
        """With several configured relays, skip those that refuse TCP (checked every 3 s)."""
        while True:
            await asyncio.sleep(3.0)
            servers = self.relay_servers
            if len(servers) < 2:
                self.relays_down = set()
                continue
            results = await asyncio.gather(*(self._reachable(s) for s in servers))
            self.relays_down = {s for s, ok in zip(servers, results, strict=True) if not ok}

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
