"""The operator console service of a gateway: ``CONSOLE_PORT`` (21114), HTTP or HTTPS.

Every gateway serves it on a shared ``SO_REUSEPORT`` listener (dual-stack unless ``BIND``
narrows it); sessions, users and samples live in Redis, so any gateway answers any request.
At start the cluster's first user, ``admin``, is created when there is no user yet, with
``ADMIN_PASSWORD`` or the password in the data dir's ``admin_password`` file (generated once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.console.accounts import Accounts
from gateway.console.api import ConsoleState, build_app
from gateway.console.live import LiveFeeds
from gateway.console.passwords import first_admin_password
from gateway.console.sampler import Sampler
from gateway.rendezvous.store import Store
from hubbub.errors import RegistryError
from hubbub.keys import server_key
from hubbub.net import ProxyList, listen_socket, server_tls
from hubbub.runtime import Context, admin_token


__all__ = ["ConsoleService"]

log = logging.getLogger("hubbub.console")

BOOTSTRAP_RETRY = 2.0


class ConsoleService:
    name = "console"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.registry = ctx.registry
        self.accounts = Accounts(ctx.registry)
        self.sampler = Sampler(ctx.registry)
        self.feeds = LiveFeeds()
        self.port = self.cfg.console_port
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._bootstrap: asyncio.Task[None] | None = None
        self._serving = False

    async def start(self) -> None:
        cfg = self.cfg
        tls = server_tls(cfg.ssl_cert, cfg.ssl_key)
        key = server_key("-" if cfg.key is None else cfg.key, Path(cfg.data_dir))
        state = ConsoleState(self.registry, self.accounts, Store(self.registry),
                             admin_token(cfg), ProxyList(cfg.trusted_proxies), key.public_b64,
                             tls is not None)
        app = build_app(state, self.feeds.handle)
        sock = listen_socket(cfg.bind_host, cfg.console_port)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock, ssl_context=tls, shutdown_timeout=1.0)
        await self._site.start()
        self._bootstrap = asyncio.ensure_future(self._ensure_admin())
        self.sampler.start()
        ports = dict(self.registry.presence_info().get("ports") or {})
        ports["console"] = self.port
        self.registry.set_info(ports=ports)
        self._serving = True
        log.info("console on %s://%s:%d", "https" if tls else "http", cfg.bind_host, self.port)

    async def _ensure_admin(self) -> None:
        """Create the first admin as soon as Redis answers (once per cluster)."""
        while True:
            try:
                if not await self.accounts.users():
                    password, _ = first_admin_password(self.cfg.admin_password,
                                                       Path(self.cfg.data_dir))
                    if await self.accounts.ensure_admin(password):
                        log.info("console user 'admin' created")
                return
            except RegistryError:
                await asyncio.sleep(BOOTSTRAP_RETRY)
            except (OSError, ValueError) as exc:
                log.error("cannot create the first console user: %s", exc)
                return

    async def drain(self) -> None:
        """End the live feeds: the pages reconnect to another gateway."""
        self._serving = False
        await self.feeds.close()

    async def close(self) -> None:
        self._serving = False
        if self._bootstrap is not None:
            self._bootstrap.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._bootstrap
        await self.sampler.close()
        self.accounts.close()
        await self.feeds.close()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()

    def healthy(self) -> bool:
        return self._serving

    def load(self) -> dict[str, Any]:
        return {"console_feeds": len(self.feeds.feeds)}
