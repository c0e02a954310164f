"""A throw-away local cluster for load tests: redis-server, gateways and shards on free ports.

Everything binds 127.0.0.1 and lives in a temporary directory that is removed afterwards; the
processes are the real ``hubbub gateway`` / ``hubbub shard`` started as subprocesses, exactly as
``hubbub up`` would, only on free ports so a run never collides with a cluster already running.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
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
from types import TracebackType

from hubbub.errors import LoadTestError
from hubbub.keys import load_or_create
from loadtest.targets import Target


__all__ = ["LocalCluster", "cpu_seconds", "free_port", "free_port_block", "pin", "pinned",
           "rss_bytes", "split_cores"]

HOST = "127.0.0.1"
# Ports handed out lately by this process, so two picks made before any server binds differ.
_recent: collections.deque[int] = collections.deque(maxlen=512)


def _free_both(port: int) -> bool:
    """Whether ``port`` is free for TCP and UDP on every address of both families.

    The probe binds the wildcard dual-stack (``[::]`` with ``IPV6_V6ONLY`` off), which clashes
    with any listener on the port, IPv4 or IPv6: a port held only by another process's v6-only
    ``SO_REUSEPORT`` listener would otherwise pass a 127.0.0.1 probe and then be shared.
    """
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        try:
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address: tuple[str, int] = ("::", port)
        except OSError:  # no IPv6 on this host
            s = socket.socket(socket.AF_INET, kind)
            address = ("0.0.0.0", port)
        with s:
            try:
                s.bind(address)
            except OSError:
                return False
    return True


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(size: int = 1) -> int:
    """First of ``size`` consecutive ports free for TCP and UDP on both families right now.

    Ports come from below the kernel's ephemeral range, so an outgoing connection cannot take
    one between this check and the server's bind; 21200 and up also avoids hubbub's defaults.
    A port handed out recently is not handed out again, since its server may not be up yet.
    """
    top = _ephemeral_low() - size
    for _ in range(500):
        base = random.randrange(21200, max(21201, top))
        block = range(base, base + size)
        if any(p in _recent for p in block):
            continue
        if all(_free_both(p) for p in block):
            _recent.extend(block)
            return base
    raise LoadTestError(f"no block of {size} free ports")


def free_port() -> int:
    """A port free for TCP and UDP on both families right now (outside the ephemeral range)."""
    return free_port_block(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process ``pid`` to ``cpus`` (Linux affinity is per thread; threads
    started later inherit it from the thread that starts them)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # gone already
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that has just exited
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block with this process (every thread, and what it starts) pinned to ``cpus``;
    the previous affinity is restored afterwards. ``None`` or an empty set: no pinning."""
    before = os.sched_getaffinity(0)
    if cpus:
        pin(os.getpid(), cpus)
    try:
        yield
    finally:
        if cpus:
            pin(os.getpid(), before)


def split_cores() -> tuple[int | None, set[int]]:
    """The core for the servers under test and the cores left to the load generator, from
    this process's affinity: ``(None, set())`` when there are not two cores to split."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, set()
    return cores[0], set(cores[1:])


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (``/proc``; 0 when unknown)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _http_status(url: str, timeout: float = 0.5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class _Proc:
    role: str
    ops_port: int
    log_path: Path
    popen: subprocess.Popen[bytes]


@dataclass
class LocalCluster:
    """``with LocalCluster(gateways=2, shards=2) as c: c.target`` — a running cluster.

    Args:
        gateways: gateway processes (they share the public ports with SO_REUSEPORT).
        shards: shard processes (one slot each).
        env: extra environment for every process (e.g. ``{"ALWAYS_USE_RELAY": "Y"}``).
        pin_cpu: pin every server process (gateways, shards and redis-server, with all their
            threads) to this one core, so a benchmark measures the servers on one core while
            its load generator runs on the others.
    """

    gateways: int = 1
    shards: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 30.0
    pin_cpu: int | None = None
    workdir: Path = field(init=False)
    target: Target = field(init=False)
    procs: list[_Proc] = field(default_factory=list, init=False)
    redis: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="hubbub-loadtest-")
        self.workdir = Path(self._tmp.name)
        redis_port = free_port()
        self._start_redis(redis_port)
        # nat = P-1, rendezvous = P, relay = R, rendezvous WS = P+2, relay WS = R+2, spaces.
        base = free_port_block(6)
        rtc = free_port_block(4 * max(1, self.shards))
        # The ID server requires its public key by default (as hbbs): clients send it.
        pair = load_or_create(self.workdir / "data")
        self.target = Target(host=HOST, rendezvous_port=base + 1, relay_port=base + 2,
                             spaces_port=base + 5, licence_key=pair.public_b64)
        self.base_env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("HUBBUB_", "PORT", "RENDEZVOUS_", "RELAY_", "SPACES_", "RTC_"))}
        self.base_env.update(
            REDIS_URL=f"redis://{HOST}:{redis_port}/0", HUBBUB_PREFIX="loadtest:",
            HUBBUB_DATA=str(self.workdir / "data"), BIND=HOST, PUBLIC_IP=HOST,
            RENDEZVOUS_PORT=str(self.target.rendezvous_port),
            RELAY_PORT=str(self.target.relay_port), SPACES_PORT=str(self.target.spaces_port),
            RTC_MIN_PORT=str(rtc), RTC_MAX_PORT=str(rtc + 4 * max(1, self.shards) - 1),
            SHARD_SLOTS=str(max(1, self.shards)), DRAIN_TIMEOUT="2", PRESENCE_TTL="3",
            LOG_LEVEL="warning", PYTHONUNBUFFERED="1", CONSOLE_PORT="0")
        self.base_env.update(self.env)
        for _ in range(self.shards):
            self._spawn("shard")
        for _ in range(self.gateways):
            self._spawn("gateway")
        deadline = time.monotonic() + self.start_timeout
        for p in self.procs:
            self._wait_healthy(p, deadline)
        self._pin_all()  # threads started before a process was first pinned

    def _start_redis(self, port: int) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise LoadTestError("redis-server not found (scripts/setup.sh installs it)")
        self.redis = subprocess.Popen(
            [exe, "--port", str(port), "--bind", HOST, "--dir", str(self.workdir), "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._pin(self.redis.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise LoadTestError("redis-server did not start")

    def add(self, role: str, **env: str) -> _Proc:
        """Start one more ``role`` process, with ``env`` over the cluster's settings, and wait
        until it is healthy; it is stopped with the cluster."""
        proc = self._spawn(role, env)
        self._wait_healthy(proc, time.monotonic() + self.start_timeout)
        self._pin_all()
        return proc

    def _spawn(self, role: str, extra: Mapping[str, str] | None = None) -> _Proc:
        ops = free_port()
        log_path = self.workdir / f"{role}-{len(self.procs)}.log"
        env = dict(self.base_env, **(extra or {}))
        index = sum(1 for p in self.procs if p.role == role) + 1
        env["HONCHO_PROCESS_NAME"] = f"{role}.{index}"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([sys.executable, "-m", "hubbub", role, "--ops-port", str(ops)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.workdir)
        self._pin(popen.pid)
        proc = _Proc(role, ops, log_path, popen)
        self.procs.append(proc)
        return proc

    def _pin(self, pid: int) -> None:
        if self.pin_cpu is not None:
            pin(pid, {self.pin_cpu})

    def _pin_all(self) -> None:
        for pid in self.server_pids():
            self._pin(pid)

    def server_pids(self) -> list[int]:
        """Every running server process: gateways, shards and redis-server."""
        pids = [p.popen.pid for p in self.procs if p.popen.poll() is None]
        if self.redis is not None and self.redis.poll() is None:
            pids.append(self.redis.pid)
        return pids

    def cpu_seconds(self) -> float:
        """CPU seconds all server processes (redis-server included) have used so far."""
        total = 0.0
        for pid in self.server_pids():
            with contextlib.suppress(OSError, IndexError, ValueError):  # exited meanwhile
                total += cpu_seconds(pid)
        return total

    def _wait_healthy(self, p: _Proc, deadline: float) -> None:
        while time.monotonic() < deadline:
            if p.popen.poll() is not None:
                raise LoadTestError(f"{p.role} exited {p.popen.returncode}: {self.log(p)[-2000:]}")
            with contextlib.suppress(OSError):
                if _http_status(f"http://{HOST}:{p.ops_port}/healthz") == 200:
                    return
            time.sleep(0.05)
        raise LoadTestError(f"{p.role} not healthy in time: {self.log(p)[-2000:]}")

    def log(self, p: _Proc) -> str:
        try:
            return p.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.role} {p.ops_port}\n{self.log(p)}" for p in self.procs)

    def ops_ports(self, role: str) -> list[int]:
        return [p.ops_port for p in self.procs if p.role == role]

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(5)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.redis.wait(5)
            if self.redis.poll() is None:
                self.redis.kill()
        self.redis = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None
