"""Process lifecycle shared by every role: loop, signals, registry, ops endpoint, services.

A role is a list of ``Service`` objects built by a factory once the process knows its identity
(and, for a shard, its slot). The first SIGTERM/SIGINT marks the process ``draining`` in the
registry, asks every service to drain and waits up to ``drain_timeout``; a second one exits at
once. Signal handlers only set flags; the main coroutine acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvloop

from hubbub import memory, metrics
from hubbub.config import Config
from hubbub.contracts.system import Ping, Pong, PongHop
from hubbub.errors import HubbubError, LeaseLost, RegistryError
from hubbub.logs import setup_logging
from hubbub.net import host_port
from hubbub.ops import OpsServer
from registry import RedisTarget, Registry, SlotLease


__all__ = [
    "EXIT_BOOT_ERROR",
    "Context",
    "Service",
    "admin_token",
    "host_name",
    "loop_runner",
    "run_process",
]

log = logging.getLogger("hubbub.process")

EXIT_BOOT_ERROR = 3
"""A listener could not bind or a service could not start: restarting will not help."""
EXIT_LEASE_LOST = 4


class Service(Protocol):
    """One capability inside a process (ID server, relay, spaces, media)."""

    name: str

    async def start(self) -> None:
        """Bind listeners and start tasks; raise to abort the process start."""

    async def drain(self) -> None:
        """Stop accepting new work and return when current work is done (caller bounds it)."""

    async def close(self) -> None:
        """Drop whatever is left; must not raise."""

    def healthy(self) -> bool:
        """Whether listeners are up and the service can serve."""

    def load(self) -> dict[str, Any]:
        """Small figures for the presence key (pairs, players, bytes/s…)."""


@dataclass
class Context:
    """What a service factory gets to build a role's services."""

    cfg: Config
    registry: Registry
    ops: OpsServer
    host: str
    slot: int | None = None
    proc_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ServiceFactory = Callable[[Context], Awaitable[Sequence[Service]]]


def host_name(cfg: Config) -> str:
    return cfg.host_id or socket.gethostname()


@contextlib.asynccontextmanager
async def tool_registry(cfg: Config) -> AsyncIterator[Registry]:
    """A command-line tool's link to the control plane: started, ready, no presence record.

    Raises:
        RegistryError: Redis did not answer within 5 s.
    """
    registry = Registry(RedisTarget.from_config(cfg), cfg.prefix, "admin", host_name(cfg),
                        presence=False)
    await registry.start()
    try:
        if not await registry.wait_ready(5.0):
            raise RegistryError("redis did not answer")
        yield registry
    finally:
        await registry.close()


def admin_token(cfg: Config) -> str:
    """``ADMIN_TOKEN`` or the token stored in the data dir (created on first use, mode 0600)."""
    if cfg.admin_token:
        return cfg.admin_token
    path = Path(cfg.data_dir) / "admin_token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write aside, then link into place: processes starting together all end up with one token.
    tmp = path.with_name(f".admin_token.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
    tmp.unlink()
    return path.read_text().strip()


def process_name(cfg: Config) -> str:
    """The launcher's name for this process (``shard.2``), else the role."""
    return os.environ.get("HONCHO_PROCESS_NAME", cfg.role)


def _instance_index() -> int:
    name = os.environ.get("HONCHO_PROCESS_NAME", "")
    try:
        return max(0, int(name.rsplit(".", 1)[1]) - 1)
    except (IndexError, ValueError):
        return 0


def pin_to_core(slot: int) -> int:
    """Pin every thread of this process to core ``slot mod cores``; returns the core."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[slot % len(cores)]
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {core})
    return core


class _Runner:
    def __init__(self, cfg: Config, factory: ServiceFactory) -> None:
        self.cfg = cfg
        self.factory = factory
        self.stop = asyncio.Event()
        self.signals = 0
        self.exit_code = 0
        self.services: list[Service] = []
        self.started = False
        self.registry = Registry(RedisTarget.from_config(cfg), cfg.prefix, cfg.role, host_name(cfg),
                                 ttl=cfg.presence_ttl)
        self.registry.on_fatal = self._fatal
        self.ops = OpsServer(cfg.bind_host, cfg.ops_port, self.healthy, admin_token(cfg),
                             ready=self.ready)

    def healthy(self) -> bool:
        ok = (self.started and self.registry.healthy and not self.stop.is_set()
              and all(s.healthy() for s in self.services))
        metrics.UP.set(1 if ok else 0)
        return ok

    def ready(self) -> bool:
        """Worth routing new clients here: started, not draining, the control plane answers."""
        return self.started and self.registry.healthy and not self.stop.is_set()

    def _fatal(self, exc: Exception) -> None:
        self.exit_code = EXIT_LEASE_LOST if isinstance(exc, LeaseLost) else 1
        self.stop.set()

    def _on_signal(self, signame: str) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: draining (up to %.0fs); send again to exit now", signame,
                     self.cfg.drain_timeout)
            self.stop.set()
        else:
            log.warning("%s again: exiting now", signame)
            os._exit(1)

    async def _ping(self, ping: Ping, sender: str) -> Pong:
        """Answer a liveness probe; with ``via`` first ping that process (route check)."""
        hop = None
        if ping.via:
            got = await self.registry.request(ping.via, Ping(), reply=Pong, timeout=2.0)
            hop = PongHop(got.id, got.role, got.pid)
        return Pong(self.registry.id, self.cfg.role, os.getpid(), hop)

    def _load(self) -> dict[str, Any]:
        load: dict[str, Any] = {}
        for s in self.services:
            with contextlib.suppress(Exception):
                load.update(s.load())
        return {"load": load}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        cfg = self.cfg
        await self.ops.start()
        self.registry.set_info(ops_port=self.ops.port, public_ip=cfg.advertised_ip,
                               name=process_name(cfg))
        self.registry.add_info_source(self._load)
        self.registry.handle(Ping, self._ping)
        await self.registry.start()
        ctx = Context(cfg, self.registry, self.ops, host_name(cfg),
                      proc_name=process_name(cfg))
        lease: SlotLease | None = None
        try:
            if cfg.role == "shard":
                lease = SlotLease(self.registry, cfg.slots, _instance_index())
                acquire = asyncio.ensure_future(lease.acquire())
                stopper = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not acquire.done():
                    acquire.cancel()
                    return await self._shutdown(lease)
                ctx.slot = acquire.result()
                core = pin_to_core(ctx.slot)
                ports = cfg.slot_ports(ctx.slot)
                self.registry.set_info(slot=ctx.slot, core=core,
                                       rtc_ports=[ports.start, ports.stop - 1])
                self.registry.add_tick(lease.refresh)
                metrics.PROCESS_INFO.labels(cfg.role, str(ctx.slot)).set(1)
            else:
                metrics.PROCESS_INFO.labels(cfg.role, "").set(1)
            self.services = list(await self.factory(ctx))
            for s in self.services:
                await s.start()
        except (OSError, HubbubError) as exc:
            log.error("cannot start %s: %s", cfg.role, exc)
            self.exit_code = EXIT_BOOT_ERROR
            return await self._shutdown(lease)
        self.started = True
        self.registry.beat_soon()
        log.info("%s %s ready (ops http://%s)", cfg.role, self.registry.id,
                 host_port(cfg.bind_host, self.ops.port))
        trim = asyncio.create_task(memory.keep_giving_back(), name="heap-trim")
        await self.stop.wait()
        trim.cancel()
        return await self._shutdown(lease)

    async def _shutdown(self, lease: SlotLease | None) -> int:
        self.stop.set()
        self.registry.set_state("draining")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.registry.beat()
        if self.services:
            try:
                async with asyncio.timeout(self.cfg.drain_timeout):
                    await asyncio.gather(*(s.drain() for s in self.services),
                                         return_exceptions=True)
            except TimeoutError:
                log.warning("drain deadline passed; closing remaining connections")
        for s in reversed(self.services):
            with contextlib.suppress(Exception):
                await s.close()
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.release()
        await self.registry.close()
        await self.ops.close()
        log.info("stopped")
        return self.exit_code


def loop_runner() -> asyncio.Runner:
    """An event loop runner on uvloop, as every hubbub process runs."""
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_process(cfg: Config, factory: ServiceFactory) -> int:
    """Run one role until it is stopped; returns the exit code."""
    setup_logging(cfg.log_level, process_name(cfg))
    with loop_runner() as runner:
        code = runner.run(_Runner(cfg, factory).run())
    sys.stdout.flush()
    return code
