"""Test helpers: free ports, a real redis-server, hubbub processes as subprocesses."""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from netns import NsHost

# Re-exported for the tests: one port chooser for tests and load tests.
from loadtest.cluster import free_port as free_port, free_port_block as free_port_block


ROOT = Path(__file__).resolve().parent.parent


def new_prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


@dataclass
class RedisServer:
    port: int
    dir: Path
    appendonly: bool = False
    proc: subprocess.Popen[bytes] | None = None
    bind: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.bind.split()[-1]}:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [exe, "--port", str(self.port), "--bind", *self.bind.split(), "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--loglevel", "warning",
                # Simulated hosts reach it over a private test bridge.
                "--protected-mode", "yes" if self.bind == "127.0.0.1" else "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_server(appendonly: bool = False, bind: str = "127.0.0.1") -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="hubbub-redis-") as d:
        srv = RedisServer(free_port(), Path(d), appendonly, bind=bind)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


def shard_env(slots: int = 1, rtc_ports: int = 4, **extra: str) -> dict[str, str]:
    """Settings for shards on free ports: ``slots`` slots sharing ``rtc_ports`` WebRTC ports and
    a relay port block; ``extra`` goes on top."""
    rtc = free_port_block(rtc_ports)
    return {"SHARD_SLOTS": str(slots), "RTC_MIN_PORT": str(rtc),
            "RTC_MAX_PORT": str(rtc + rtc_ports - 1), "RELAY_PORT": str(free_port_block(3)),
            **extra}


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client end, server end) of one loopback TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


IO_MODULES = frozenset({"asyncio", "socket", "selectors", "websockets", "aiortc", "aioice",
                        "redis", "uvloop"})
"""What a sans-I/O module must not import."""
SANS_IO_PARTS = frozenset({"websockets.protocol", "websockets.server", "websockets.frames",
                           "websockets.http11", "websockets.datastructures"})
"""The websockets library's own sans-I/O API, which sans-I/O modules may use."""


def io_imports(path: Path) -> set[str]:
    """The I/O packages (``IO_MODULES``) the Python module at ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names if a.name not in SANS_IO_PARTS}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module not in SANS_IO_PARTS:
                found.add(node.module.split(".")[0])
    return found & IO_MODULES


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def assert_memory_bounded(start: int, peaks: list[int], afters: list[int], during: int,
                          after: int) -> None:
    """RSS growth over ``start`` per round: at most ``during`` at its peak, and at most ``after``
    once the last round's load is gone (printed, so a run shows the numbers)."""
    mib = 1024 * 1024
    report = (f"start {start / mib:.1f} MiB; growth during "
              f"{[round(p / mib, 1) for p in peaks]} MiB, after "
              f"{[round(a / mib, 1) for a in afters]} MiB")
    print(report)
    assert max(peaks) <= during, report
    assert afters[-1] <= after, report


@dataclass
class HubbubProcess:
    """A ``hubbub <role>`` subprocess with its ops port and log file."""

    role: str
    ops_port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    ops_host: str = "127.0.0.1"

    @property
    def ops_url(self) -> str:
        return f"http://{self.ops_host}:{self.ops_port}"

    def healthy(self) -> bool:
        with contextlib.suppress(OSError):
            return http_get(f"{self.ops_url}/healthz", 0.5)[0] == 200
        return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited {self.proc.returncode}:\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.role} not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def metrics(self) -> str:
        return http_get(f"{self.ops_url}/metrics")[1].decode()


class Cluster:
    """Starts hubbub processes against one Redis and prefix; kills them all at the end."""

    def __init__(self, redis_url: str, prefix: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.workdir = workdir
        self.procs: list[HubbubProcess] = []

    def env(self, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """The environment of a test process; a ``None`` value in ``extra`` unsets that name.

        ``KEY`` is empty (sign, no licence check) unless a test asks for hbbs's default.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBBUB_", "PORT"))}
        env.update(REDIS_URL=self.redis_url, HUBBUB_PREFIX=self.prefix,
                   HUBBUB_DATA=str(self.workdir / "data"), PRESENCE_TTL="1.5",
                   DRAIN_TIMEOUT="2", BIND="127.0.0.1", PUBLIC_IP="127.0.0.1",
                   PYTHONUNBUFFERED="1", KEY="", CONSOLE_PORT="0")
        for name, value in (extra or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def start(self, role: str, *args: str, env: Mapping[str, str | None] | None = None,
              wait: bool = True, host: NsHost | None = None) -> HubbubProcess:
        """Start ``hubbub <role>``; with ``host``, inside that simulated host's namespace."""
        extra: dict[str, str | None] = dict(env or {})
        ops = self._ops_port(extra)
        log_path = self.workdir / f"{role}-{len(self.procs)}.log"
        argv = [sys.executable, "-m", "hubbub", role, "--ops-port", str(ops), *args]
        ops_host = "127.0.0.1"
        if host is not None:
            extra = {"BIND": "0.0.0.0", "PUBLIC_IP": host.addr, "HUBBUB_HOST": host.name,
                     **extra}
            argv = host.cmd(*argv)
            ops_host = host.addr
        full_env = self.env(extra)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    cwd=self.workdir)
        p = HubbubProcess(role, ops, log_path, proc, full_env, ops_host)
        self.procs.append(p)
        if wait:
            p.wait_healthy()
        return p

    def _ops_port(self, extra: Mapping[str, str | None]) -> int:
        """A free port that none of this cluster's processes is told to use.

        The free-port check runs in this namespace, but a simulated host's listeners are bound
        in its own, where the check cannot see them; so ports named in any process's settings
        (each with the neighbours hubbub derives from it) are ruled out as well.
        """
        taken = {p.ops_port for p in self.procs}
        for env in [*(p.env for p in self.procs), self.env(extra)]:
            for name, value in env.items():
                if name.endswith("_PORT") and value.isdigit():
                    taken.update(range(int(value) - 1, int(value) + 3))
            low, high = env.get("RTC_MIN_PORT", ""), env.get("RTC_MAX_PORT", "")
            if low.isdigit() and high.isdigit():
                taken.update(range(int(low), int(high) + 1))
        for _ in range(100):
            port = free_port()
            if port not in taken:
                return port
        raise RuntimeError("no free ops port")

    def hubbub(self, *args: str, env: Mapping[str, str | None] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hubbub", *args], capture_output=True,
                              text=True, env=self.env(env), cwd=self.workdir, timeout=timeout)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.kill(signal.SIGTERM)
