"""``hubbub redis``: run the control plane locally, durable (AOF, fsync every second).

Three shapes, chosen by the same settings the other processes read:

* ``REDIS_URL`` alone: one redis-server where it points;
* ``REDIS_SENTINELS``: a primary (at ``REDIS_URL``'s port), one replica (the next port) and a
  Sentinel on each listed port, with the primary named ``REDIS_SENTINEL_MASTER``;
* ``REDIS_CLUSTER_NODES``: a Redis Cluster of those nodes, one replica per primary (so six
  nodes make three primaries), created with ``redis-cli --cluster create`` on first start.

Every node listens on loopback only and keeps its files under ``<data>/redis*``. The same
classes start the throw-away deployments of the tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis

from hubbub.config import Config, add_setting_flags, new_parser, parse_config
from hubbub.errors import ConfigError, ServiceError
from registry.target import parse_host_port


__all__ = ["LocalRedis", "RedisCluster", "SentinelSet", "free_cluster_ports", "main",
           "redis_argv"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
FAILOVER_AFTER_MS = 2000
"""Sentinel ``down-after-milliseconds`` / ``cluster-node-timeout`` of the local deployments: the
fail-over (about this plus 1-2 s) stays inside the default 5 s presence TTL."""


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


def redis_argv(redis_url: str, data_dir: str) -> list[str]:
    """The redis-server command line for the embedded single Redis."""
    url = urlparse(redis_url)
    host = url.hostname or "127.0.0.1"
    if host not in LOOPBACK:
        raise ConfigError(f"invalid value for REDIS_URL: the embedded Redis listens on loopback "
                          f"only, not {host}")
    path = Path(data_dir, "redis").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return [_exe("redis-server"), "--bind", "127.0.0.1" if host == "localhost" else host,
            "--port", str(url.port or 6379), "--dir", str(path),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]


@dataclass
class LocalRedis:
    """One redis-server with a config file in its own directory (Sentinel and CONFIG REWRITE
    need one)."""

    port: int
    dir: Path
    lines: list[str] = field(default_factory=list)
    durable: bool = True
    password: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        conf = self.dir / "redis.conf"
        if conf.exists():
            return conf  # rewritten by Sentinel or CONFIG REWRITE since: keep what it says
        self.dir.mkdir(parents=True, exist_ok=True)
        text = [f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", "daemonize no",
                f'dir "{self.dir}"', "save \"\"", "loglevel warning",
                f"appendonly {'yes' if self.durable else 'no'}", "appendfsync everysec",
                # A (re)joining replica syncs at once instead of after the default 5 s wait.
                "repl-diskless-sync-delay 0"]
        if self.password:
            text += [f"requirepass {self.password}", f"masterauth {self.password}"]
        conf.write_text("\n".join(text + self.lines) + "\n")
        return conf

    def start(self, exe: str = "redis-server") -> None:
        conf = self.write_config()
        log = open(self.dir / "log.txt", "ab")  # noqa: SIM115 - owned by the child from here
        try:
            self.proc = subprocess.Popen([_exe(exe), str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            log.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password or None,
                           socket_timeout=2.0, socket_connect_timeout=1.0)

    def ping(self) -> bool:
        with contextlib.suppress(redis.RedisError, OSError), self.client() as c:
            return bool(c.ping())
        return False

    def wait_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            if self.ping():
                return
            time.sleep(0.05)
        raise ServiceError(f"redis on port {self.port} did not start "
                           f"(see {self.dir / 'log.txt'})")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _wait(check: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if callable(check) and check():
                return
        time.sleep(0.1)
    raise ServiceError(f"{what} not ready after {timeout:g}s")


class SentinelSet:
    """A primary, one replica and Sentinels watching them (quorum: a majority)."""

    def __init__(self, root: Path, primary_port: int, sentinel_ports: Sequence[int],
                 master: str = "hubbub", down_after_ms: int = 5000, durable: bool = True,
                 password: str = "", replica_port: int | None = None) -> None:
        self.master = master
        self.password = password
        rport = replica_port or primary_port + 1
        self.nodes = [LocalRedis(primary_port, root / f"node-{primary_port}", durable=durable,
                                 password=password),
                      LocalRedis(rport, root / f"node-{rport}",
                                 [f"replicaof 127.0.0.1 {primary_port}"], durable, password)]
        quorum = len(sentinel_ports) // 2 + 1
        self.sentinels = []
        for port in sentinel_ports:
            lines = [f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
                     f"sentinel down-after-milliseconds {master} {down_after_ms}",
                     f"sentinel failover-timeout {master} {max(down_after_ms * 4, 3000)}",
                     f"sentinel parallel-syncs {master} 1"]
            if password:
                lines.append(f"sentinel auth-pass {master} {password}")
            s = LocalRedis(port, root / f"sentinel-{port}", lines, durable=False)
            self.sentinels.append(s)

    @property
    def sentinel_addrs(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """The settings that point hubbub processes at this deployment."""
        auth = f":{self.password}@" if self.password else ""
        return {"REDIS_SENTINELS": self.sentinel_addrs, "REDIS_SENTINEL_MASTER": self.master,
                "REDIS_URL": f"redis://{auth}127.0.0.1:{self.nodes[0].port}/0"}

    def start(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_up()
        for s in self.sentinels:
            # A sentinel config must not carry data-node settings; keep only its own lines.
            conf = s.dir / "redis.conf"
            if not conf.exists():
                s.dir.mkdir(parents=True, exist_ok=True)
                conf.write_text("\n".join([f"port {s.port}", "bind 127.0.0.1",
                                           "protected-mode no", "daemonize no",
                                           f'dir "{s.dir}"', "loglevel warning", *s.lines])
                                + "\n")
            s.start("redis-sentinel")
        for s in self.sentinels:
            s.wait_up()
        _wait(self.ready, "sentinels", timeout)

    def ready(self) -> bool:
        host_port = self.primary()
        if host_port is None:
            return False
        primary = next((n for n in self.nodes if n.port == host_port[1]), None)
        if primary is None:
            return False
        with primary.client() as c:
            info = c.info("replication")
        if info.get("role") != "master" or not _replica_online(info):
            return False
        for s in self.sentinels:
            with s.client() as c:
                m = c.execute_command("SENTINEL", "MASTER", self.master)
            fields = dict(zip(m[::2], m[1::2], strict=False)) if isinstance(m, list) else m
            fields = {_s(k): _s(v) for k, v in fields.items()}
            if int(fields.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
            if int(fields.get("num-slaves", 0)) < 1 or "down" in fields.get("flags", ""):
                return False
        return True

    def primary(self) -> tuple[str, int] | None:
        """The primary the Sentinels name now (None if none answers)."""
        for s in self.sentinels:
            if not s.alive:
                continue
            with contextlib.suppress(redis.RedisError, OSError), s.client() as c:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
                if addr:
                    return _s(addr[0]), int(addr[1])
        return None

    def primary_node(self) -> LocalRedis:
        addr = self.primary()
        for node in self.nodes:
            if addr is not None and node.port == addr[1]:
                return node
        raise ServiceError("no primary known to the sentinels")

    def all(self) -> list[LocalRedis]:
        return [*self.nodes, *self.sentinels]

    def stop(self) -> None:
        for p in reversed(self.all()):
            p.stop()


class RedisCluster:
    """A Redis Cluster on loopback: ``len(ports) / (replicas + 1)`` primaries."""

    def __init__(self, root: Path, ports: Sequence[int], replicas: int = 1,
                 node_timeout_ms: int = 5000, durable: bool = True, password: str = "") -> None:
        self.replicas = replicas
        self.password = password
        self.nodes = [LocalRedis(p, root / f"node-{p}",
                                 ["cluster-enabled yes", "cluster-config-file nodes.conf",
                                  f"cluster-node-timeout {node_timeout_ms}"],
                                 durable, password) for p in ports]

    @property
    def addrs(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def env(self) -> dict[str, str]:
        auth = f":{self.password}@" if self.password else ""
        return {"REDIS_CLUSTER_NODES": self.addrs,
                "REDIS_URL": f"redis://{auth}127.0.0.1:{self.nodes[0].port}/0"}

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_up()
        if not self._created():
            cmd = [_exe("redis-cli"), "--cluster", "create",
                   *(f"127.0.0.1:{n.port}" for n in self.nodes),
                   "--cluster-replicas", str(self.replicas), "--cluster-yes"]
            if self.password:
                cmd[1:1] = ["-a", self.password, "--no-auth-warning"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed: {done.stdout}"
                                   f"{done.stderr}")
        _wait(self.ready, "redis cluster", timeout)

    def _created(self) -> bool:
        with self.nodes[0].client() as c:
            info = c.execute_command("CLUSTER", "INFO")
        return "cluster_slots_assigned:16384" in _s(info)

    def ready(self) -> bool:
        """Every slot served, every live node agrees, every primary has its replicas."""
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as c:
                if "cluster_state:ok" not in _s(c.execute_command("CLUSTER", "INFO")):
                    return False
                # Every node must know each primary's replicas (gossip), or clients that
                # ask it for the slot map would see none.
                if any(len(entry) < 3 + self.replicas
                       for entry in c.execute_command("CLUSTER", "SLOTS")):
                    return False
                info = c.info("replication")
            if info.get("role") == "master" and self.replicas and \
                    not _replica_online(info) and self._serves_slots(node):
                return False
        return True

    def _serves_slots(self, node: LocalRedis) -> bool:
        with node.client() as c:
            myself = [line for line in _s(c.execute_command("CLUSTER", "NODES")).splitlines()
                      if "myself" in line]
        return bool(myself) and len(myself[0].split()) > 8

    def primaries(self) -> list[LocalRedis]:
        out = []
        for node in self.nodes:
            if not node.alive:
                continue
            with contextlib.suppress(redis.RedisError, OSError), node.client() as c:
                if c.info("replication").get("role") == "master" and self._serves_slots(node):
                    out.append(node)
        return out

    def wait_state_ok(self, timeout: float = 30.0) -> None:
        def ok() -> bool:
            live = [n for n in self.nodes if n.alive]
            for node in live:
                with node.client() as c:
                    if "cluster_state:ok" not in _s(c.execute_command("CLUSTER", "INFO")):
                        return False
            return True
        _wait(ok, "redis cluster state", timeout)

    def all(self) -> list[LocalRedis]:
        return list(self.nodes)

    def stop(self) -> None:
        for p in self.nodes:
            p.stop()


def _replica_online(info: dict[str, object]) -> bool:
    return any(isinstance(v, dict) and v.get("state") == "online"
               for k, v in info.items() if k.startswith("slave"))


def free_cluster_ports(count: int) -> list[int]:
    """``count`` loopback ports that are free together with their cluster bus port (+10000)."""
    import socket

    out: list[int] = []
    while len(out) < count:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port + 10000 > 65535 or port in out:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
        out.append(port)
    return out


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _serve(local: SentinelSet | RedisCluster) -> int:
    """Start the deployment and keep it until SIGTERM/SIGINT (honcho stops us that way)."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    try:
        local.start()
        kind = "cluster" if isinstance(local, RedisCluster) else "sentinel"
        print(f"hubbub redis: {kind} up: "
              + " ".join(f"127.0.0.1:{p.port}" for p in local.all()), flush=True)
        while not stop:
            time.sleep(0.2)
    except ServiceError as exc:
        sys.stderr.write(f"hubbub redis: error: {exc}\n")
        return 3
    finally:
        local.stop()
    return 0


def _loopback_ports(entries: Sequence[str], name: str) -> list[int]:
    ports = []
    for entry in entries:
        host, port = parse_host_port(entry)
        if host not in LOOPBACK:
            raise ConfigError(f"invalid value for {name}: the embedded Redis listens on "
                              f"loopback only, not {host}")
        ports.append(port)
    return ports


def deployment(cfg: Config) -> SentinelSet | RedisCluster | None:
    """The local Sentinel set or cluster ``cfg`` describes (None: a single Redis)."""
    url = urlparse(cfg.redis_url)
    password = unquote(url.password or "")
    root = Path(cfg.data_dir).resolve()
    if cfg.redis_cluster_nodes:
        ports = _loopback_ports(cfg.redis_cluster_nodes, "REDIS_CLUSTER_NODES")
        if len(ports) < 6 or len(ports) % 2:
            raise ConfigError("invalid value for REDIS_CLUSTER_NODES: the embedded cluster "
                              "needs an even number of nodes, at least 6 (3 primaries)")
        return RedisCluster(root / "redis-cluster", ports, node_timeout_ms=FAILOVER_AFTER_MS,
                            password=password)
    if cfg.redis_sentinels:
        ports = _loopback_ports(cfg.redis_sentinels, "REDIS_SENTINELS")
        if (url.hostname or "127.0.0.1") not in LOOPBACK:
            raise ConfigError("invalid value for REDIS_URL: the embedded Redis listens on "
                              "loopback only")
        return SentinelSet(root / "redis-sentinel", url.port or 6379, ports,
                           cfg.redis_sentinel_master, down_after_ms=FAILOVER_AFTER_MS,
                           password=password)
    return None


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub redis", "run the embedded Redis (single, Sentinel or Cluster)")
    add_setting_flags(parser, "redis")
    cfg, _ = parse_config(parser, "redis", argv)
    try:
        local = deployment(cfg)
        args = redis_argv(cfg.redis_url, cfg.data_dir) if local is None else []
    except ConfigError as exc:
        parser.error(str(exc))
    if local is None:
        if not os.path.exists(args[0]):
            sys.stderr.write("hubbub redis: error: redis-server not found (run ./run.sh once)\n")
            return 3
        os.execv(args[0], args)
    return _serve(local)
