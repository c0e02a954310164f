"""One frozen ``Config`` built from flags, the environment and ``.env``.

Every setting is declared once in ``SETTINGS``: that table drives the argument parser, the
environment lookup, validation and the README's configuration table (``hubbub config --markdown``).
Precedence: flag > real environment > ``.env`` in the working directory > default. Flag and env
names follow hbbs/hbbr and the Wired host where they overlap. The bare ``PORT`` variable is never
read: hbbs and honcho give it different meanings, so only the Procfile decides what it becomes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hubbub.errors import ConfigError
from hubbub.net import parse_networks


__all__ = ["SETTINGS", "Config", "Setting", "load_config", "read_dotenv", "settings_markdown"]


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "y", "yes", "true", "on"):
        return True
    if low in ("0", "n", "no", "false", "off", ""):
        return False
    raise ValueError(f"expected Y or N, got {text!r}")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port out of range: {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _pump(text: str) -> str:
    value = text.strip().lower()
    if value not in ("splice", "buffered"):
        raise ValueError("expected splice or buffered")
    return value


def _str(text: str) -> str:
    return text


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _host_ports(text: str) -> tuple[str, ...]:
    entries = _str_list(text)
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {entry!r}")
    return entries


def _replicas(text: str) -> int:
    if text.strip().lower() == "auto":
        return -1
    value = int(text)
    if value < -1:
        raise ValueError(f"must be auto, -1 or >= 0, got {value}")
    return value


def _cidr_list(text: str) -> tuple[str, ...]:
    entries = _str_list(text)
    parse_networks(entries)
    return entries


@dataclass(frozen=True)
class Setting:
    """One configuration knob: its field, flags, env vars, parser, default and meaning."""

    name: str
    flags: tuple[str, ...]
    env: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    help: str
    roles: tuple[str, ...] = ("gateway", "shard")


_ALL = ("gateway", "shard", "status", "redis", "admin")

SETTINGS: tuple[Setting, ...] = (
    # --- cluster and process ---
    Setting("redis_url", ("--redis-url",), ("REDIS_URL",), "redis://127.0.0.1:6379/0", _str,
            "Redis of the cluster (the embedded one by default)", _ALL),
    Setting("redis_sentinels", ("--redis-sentinels",), ("REDIS_SENTINELS",), (), _host_ports,
            "Sentinels (host:port,...) that name the Redis primary; REDIS_URL then only gives "
            "its user, password and TLS", _ALL),
    Setting("redis_sentinel_master", ("--redis-sentinel-master",), ("REDIS_SENTINEL_MASTER",),
            "hubbub", _str, "name of the primary the Sentinels monitor", _ALL),
    Setting("redis_sentinel_password", ("--redis-sentinel-password",),
            ("REDIS_SENTINEL_PASSWORD",), "", _str,
            "password of the Sentinels themselves (empty: none)", _ALL),
    Setting("redis_cluster_nodes", ("--redis-cluster-nodes",), ("REDIS_CLUSTER_NODES",), (),
            _host_ports, "Redis Cluster nodes (host:port,...) to discover the cluster from; "
            "REDIS_URL then only gives user, password and TLS", _ALL),
    Setting("redis_min_replicas", ("--redis-min-replicas",), ("REDIS_MIN_REPLICAS",), -1,
            _replicas, "replicas that must hold a binding or admin change before it is "
            "acknowledged (WAIT); -1 or auto: 1 while the primary has a replica, else 0", _ALL),
    Setting("prefix", ("--prefix",), ("HUBBUB_PREFIX",), "hubbub:", _str,
            "prefix of every Redis key and channel", _ALL),
    Setting("data_dir", ("--data-dir",), ("HUBBUB_DATA",), "./data", _str,
            "data directory: key pair, block/black lists, embedded Redis files", _ALL),
    Setting("host_id", ("--host-id",), ("HUBBUB_HOST",), "", _str,
            "name of this host in the cluster (default: the hostname)"),
    Setting("public_ip", ("--public-ip",), ("PUBLIC_IP",), "", _str,
            "address this host advertises to clients (default: first non-loopback address)"),
    Setting("bind", ("-b", "--bind"), ("BIND",), "", _str,
            "listen address (default: all addresses, IPv4 and IPv6)"),
    Setting("ops_port", ("--ops-port",), ("OPS_PORT",), 0, _port,
            "HTTP port for /healthz and /metrics (0: any free port)"),
    Setting("presence_ttl", ("--presence-ttl",), ("PRESENCE_TTL",), 5.0, _positive_float,
            "seconds before a silent process (and its shard slot) counts as dead", _ALL),
    Setting("drain_timeout", ("--drain-timeout",), ("DRAIN_TIMEOUT",), 10.0, _non_negative_float,
            "seconds the first SIGTERM waits for connections to finish"),
    Setting("log_level", ("--log-level",), ("LOG_LEVEL",), "info", _str,
            "debug, info, warning or error", _ALL),
    # --- RustDesk ID server (hbbs) ---
    Setting("rendezvous_port", ("-p", "--port"), ("RENDEZVOUS_PORT",), 21116, _port,
            "RustDesk rendezvous port (TCP+UDP); NAT test on port-1, WebSocket on port+2"),
    Setting("relay_servers", ("-r", "--relay-servers"), ("RELAY_SERVERS", "RELAY-SERVERS"), (),
            _str_list, "relay hosts handed to clients (default: least-loaded live relay host)"),
    Setting("key", ("-k", "--key"), ("KEY",), None, _str,
            "licence key, as hbbs/hbbr: unset = '-' on the ID server and no check on the relay; "
            "'-' or '_' = sign with the data-dir key pair and require its public key; empty = "
            "sign, no check; a base64 secret key = use it; other text = required as is, "
            "signed only if it is that pair's public key"),
    Setting("rmem", ("-M", "--rmem"), ("RMEM",), 0, _non_negative_int,
            "UDP receive buffer size for the rendezvous socket (0: OS default)"),
    Setting("mask", ("--mask",), ("MASK",), "", _str,
            "LAN CIDR: peers inside it are given LOCAL_IP as relay"),
    Setting("local_ip", ("--local-ip",), ("LOCAL_IP", "LOCAL-IP"), "", _str,
            "relay address for LAN peers (only with --mask)"),
    Setting("always_use_relay", ("--always-use-relay",), ("ALWAYS_USE_RELAY",), False, _bool,
            "Y: always tell peers to relay"),
    Setting("serial", ("-s", "--serial"), ("SERIAL",), 0, _non_negative_int,
            "configuration serial for ConfigUpdate (legacy clients)"),
    Setting("rendezvous_servers", ("-R", "--rendezvous-servers"),
            ("RENDEZVOUS_SERVERS", "RENDEZVOUS-SERVERS"), (), _str_list,
            "rendezvous servers for ConfigUpdate (legacy clients)"),
    Setting("secure_tcp", ("--secure-tcp",), ("SECURE_TCP",), True, _bool,
            "offer the KeyExchange handshake on TCP 21116 to clients that want it"),
    Setting("trusted_proxies", ("--trusted-proxies",), ("TRUSTED_PROXIES",), (), _cidr_list,
            "proxy addresses/CIDRs whose X-Real-IP / X-Forwarded-For headers are honoured"),
    Setting("admin_token", ("--admin-token",), ("ADMIN_TOKEN",), "", _str,
            "token that authorises admin commands (empty: generated into the data dir)", _ALL),
    # --- operator console ---
    Setting("console_port", ("--console-port",), ("CONSOLE_PORT",), 21114, _port,
            "operator console and /api/ port (HTTPS with SSL_CERT/SSL_KEY; 0: off)",
            ("gateway",)),
    Setting("admin_password", ("--admin-password",), ("ADMIN_PASSWORD",), "", _str,
            "password of the first console user 'admin' (empty: generated into the data dir)",
            ("gateway",)),
    # --- RustDesk relay (hbbr) ---
    Setting("relay_port", ("--relay-port",), ("RELAY_PORT",), 21117, _port,
            "RustDesk relay port (TCP); WebSocket relay on port+2"),
    Setting("total_bandwidth", ("--total-bandwidth",), ("TOTAL_BANDWIDTH",), 1024.0,
            _non_negative_float, "relay bandwidth per host, Mb/s (0: unlimited)"),
    Setting("single_bandwidth", ("--single-bandwidth",), ("SINGLE_BANDWIDTH",), 128.0,
            _non_negative_float, "relay bandwidth per connection, Mb/s (0: unlimited)"),
    Setting("limit_speed", ("--limit-speed",), ("LIMIT_SPEED",), 32.0, _non_negative_float,
            "bandwidth of a downgraded or blacklisted connection, Mb/s"),
    Setting("downgrade_threshold", ("--downgrade-threshold",), ("DOWNGRADE_THRESHOLD",), 0.66,
            _non_negative_float, "fraction of SINGLE_BANDWIDTH above which a pair is downgraded"),
    Setting("downgrade_start_check", ("--downgrade-start-check",), ("DOWNGRADE_START_CHECK",),
            1800.0, _non_negative_float, "seconds after pairing before downgrade checks start"),
    Setting("relay_timeout", ("--relay-timeout",), ("RELAY_TIMEOUT",), 30.0, _positive_float,
            "relay: seconds to wait for the first message, for the other half, and without "
            "traffic before closing"),
    Setting("relay_pump", ("--relay-pump",), ("RELAY_PUMP",), "buffered", _pump,
            "relay: how TCP <-> TCP pairs move bytes: buffered (asyncio transports) or splice "
            "(os.splice through a pipe)"),
    # --- spaces host (Wired) ---
    Setting("spaces_port", ("--spaces-port",), ("SPACES_PORT",), 4000, _port,
            "spaces WebSocket + HTTP port"),
    Setting("ssl_cert", ("--ssl-cert",), ("SSL_CERT",), "", _str,
            "TLS certificate file for the spaces and console ports (with SSL_KEY)"),
    Setting("ssl_key", ("--ssl-key",), ("SSL_KEY",), "", _str,
            "TLS private key file for the spaces and console ports (with SSL_CERT)"),
    Setting("spaces_max_frame", ("--spaces-max-frame",), ("SPACES_MAX_FRAME",), 65536,
            _positive_int, "largest spaces WebSocket message in bytes (the Wired host: 16384)"),
    Setting("spaces_max_url", ("--spaces-max-url",), ("SPACES_MAX_URL",), 2048, _positive_int,
            "longest space URI or avatar URL, in characters"),
    Setting("spaces_max_name", ("--spaces-max-name",), ("SPACES_MAX_NAME",), 128,
            _positive_int, "longest player name or wallet address, in characters"),
    Setting("spaces_max_chat", ("--spaces-max-chat",), ("SPACES_MAX_CHAT",), 16384,
            _positive_int, "longest chat message, in characters"),
    Setting("spaces_rate", ("--spaces-rate",), ("SPACES_RATE",), 40.0, _positive_float,
            "messages per second a spaces socket may send (token bucket, positions included)"),
    Setting("spaces_burst", ("--spaces-burst",), ("SPACES_BURST",), 200, _positive_int,
            "messages a spaces socket may send at once above SPACES_RATE"),
    Setting("spaces_per_socket", ("--spaces-per-socket",), ("SPACES_PER_SOCKET",), 8,
            _positive_int, "spaces one WebSocket may join at once"),
    Setting("spaces_sockets_per_ip", ("--spaces-sockets-per-ip",), ("SPACES_SOCKETS_PER_IP",),
            1024, _positive_int, "spaces WebSockets one client address may hold per gateway"),
    Setting("spaces_idle_timeout", ("--spaces-idle-timeout",), ("SPACES_IDLE_TIMEOUT",), 60.0,
            _positive_float, "seconds before a silent spaces socket that misses pings is closed"),
    Setting("rtc_min_port", ("--rtc-min-port",), ("RTC_MIN_PORT",), 20000, _port,
            "first port of the WebRTC range (split into slices by shard slot)", _ALL),
    Setting("rtc_max_port", ("--rtc-max-port",), ("RTC_MAX_PORT",), 20020, _port,
            "last port of the WebRTC range", _ALL),
    Setting("shard_slots", ("--shard-slots",), ("SHARD_SLOTS",), 0, _non_negative_int,
            "shard slots per host (0: one per CPU core)", _ALL),
    Setting("announced_ip", ("--announced-ip",), ("MEDIASOUP_ANNOUNCED_IP", "ANNOUNCED_IP"), "",
            _str, "address in WebRTC candidates (default: PUBLIC_IP)"),
    Setting("listen_ip", ("--listen-ip",), ("MEDIASOUP_LISTEN_IP",), "", _str,
            "address the WebRTC sockets bind (default: BIND if set, else all IPv4 and IPv6)"),
    Setting("media_max_speakers", ("--media-max-speakers",), ("MEDIA_MAX_SPEAKERS",), 0,
            _non_negative_int, "loudest voices forwarded per space (0: every voice)", ("shard",)),
)


@dataclass(frozen=True)
class Config:
    """Every setting of a hubbub process; built once in ``main()`` and passed down."""

    role: str = "gateway"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "hubbub"
    redis_sentinel_password: str = ""
    redis_cluster_nodes: tuple[str, ...] = ()
    redis_min_replicas: int = -1
    prefix: str = "hubbub:"
    data_dir: str = "./data"
    host_id: str = ""
    public_ip: str = ""
    bind: str = ""
    ops_port: int = 0
    presence_ttl: float = 5.0
    drain_timeout: float = 10.0
    log_level: str = "info"
    rendezvous_port: int = 21116
    relay_servers: tuple[str, ...] = ()
    key: str | None = None
    """``None`` when unset: each role applies its hbbs/hbbr default."""
    rmem: int = 0
    mask: str = ""
    local_ip: str = ""
    always_use_relay: bool = False
    serial: int = 0
    rendezvous_servers: tuple[str, ...] = ()
    secure_tcp: bool = True
    trusted_proxies: tuple[str, ...] = ()
    admin_token: str = ""
    console_port: int = 21114
    admin_password: str = ""
    relay_port: int = 21117
    total_bandwidth: float = 1024.0
    single_bandwidth: float = 128.0
    limit_speed: float = 32.0
    downgrade_threshold: float = 0.66
    downgrade_start_check: float = 1800.0
    relay_timeout: float = 30.0
    relay_pump: str = "buffered"
    spaces_port: int = 4000
    ssl_cert: str = ""
    ssl_key: str = ""
    spaces_max_frame: int = 65536
    spaces_max_url: int = 2048
    spaces_max_name: int = 128
    spaces_max_chat: int = 16384
    spaces_rate: float = 40.0
    spaces_burst: int = 200
    spaces_per_socket: int = 8
    spaces_sockets_per_ip: int = 1024
    spaces_idle_timeout: float = 60.0
    rtc_min_port: int = 20000
    rtc_max_port: int = 20020
    shard_slots: int = 0
    announced_ip: str = ""
    listen_ip: str = ""
    media_max_speakers: int = 0

    @property
    def nat_port(self) -> int:
        return self.rendezvous_port - 1

    @property
    def ws_port(self) -> int:
        return self.rendezvous_port + 2

    @property
    def relay_ws_port(self) -> int:
        return self.relay_port + 2

    @property
    def slots(self) -> int:
        return self.shard_slots or len(os.sched_getaffinity(0))

    @property
    def slice_size(self) -> int:
        return max(1, (self.rtc_max_port - self.rtc_min_port + 1) // self.slots)

    def slot_ports(self, slot: int) -> range:
        """RTC ports owned by ``slot`` (equal slices; the remainder stays unused)."""
        start = self.rtc_min_port + slot * self.slice_size
        return range(start, min(start + self.slice_size, self.rtc_max_port + 1))

    @property
    def advertised_ip(self) -> str:
        return self.public_ip or "127.0.0.1"

    @property
    def rtc_listen_ip(self) -> str:
        """Address of the shards' WebRTC sockets: MEDIASOUP_LISTEN_IP, else BIND, else ``::``
        (IPv4 and IPv6, as every listener)."""
        return self.listen_ip or self.bind or "::"

    @property
    def rtc_announced_ip(self) -> str:
        return self.announced_ip or self.advertised_ip

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def tls(self) -> bool:
        return bool(self.ssl_cert and self.ssl_key)

    @property
    def bind_host(self) -> str:
        """Address for listeners: ``BIND`` or the dual-stack wildcard."""
        return self.bind or "::"


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse ``KEY=value`` lines (comments, blanks, ``export`` and quotes allowed)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"hubbub {self.prog.split()[-1]}: error: {message}\n")
        raise SystemExit(2)


def add_setting_flags(parser: argparse.ArgumentParser, role: str) -> None:
    for s in SETTINGS:
        if role in s.roles:
            parser.add_argument(*s.flags, dest=s.name, default=None, metavar=s.env[0],
                                help=f"{s.help} [env {s.env[0]}, default {_show(s.default)}]")


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return ",".join(value) or "empty"
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value) if value != "" else "empty"


def load_config(role: str, args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                dotenv: Path | None = Path(".env")) -> Config:
    """Build the frozen ``Config`` for ``role`` from parsed flags, env and ``.env``.

    Raises:
        ConfigError: naming the flag or variable whose value is invalid.
    """
    env: dict[str, str] = {}
    if dotenv is not None:
        env.update(read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {"role": role}
    for s in SETTINGS:
        raw = getattr(args, s.name, None)
        source = s.flags[-1]
        if raw is None:
            for name in s.env:
                if name in env:
                    raw, source = env[name], name
                    break
        if raw is None:
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid value for {source}: {raw!r} ({exc})") from None
    if not values.get("shard_slots"):
        # Resolved once here: a pinned shard's own affinity no longer shows every core.
        values["shard_slots"] = len(os.sched_getaffinity(0))
    cfg = Config(**values)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    if cfg.rtc_min_port > cfg.rtc_max_port:
        raise ConfigError(
            f"invalid value for RTC_MIN_PORT/RTC_MAX_PORT: {cfg.rtc_min_port} > {cfg.rtc_max_port}")
    if cfg.rendezvous_port and cfg.rendezvous_port < 3:
        raise ConfigError(f"invalid value for --port: {cfg.rendezvous_port} (must be >= 3)")
    if bool(cfg.ssl_cert) != bool(cfg.ssl_key):
        raise ConfigError("invalid value for SSL_CERT/SSL_KEY: set both or neither")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"invalid value for LOG_LEVEL: {cfg.log_level!r}")
    if cfg.redis_sentinels and cfg.redis_cluster_nodes:
        raise ConfigError("invalid value for REDIS_SENTINELS/REDIS_CLUSTER_NODES: set one or "
                          "neither")
    if not cfg.prefix:
        raise ConfigError("invalid value for HUBBUB_PREFIX: must not be empty")


def new_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description)


def settings_markdown() -> str:
    """The configuration table of the README."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        flags = ", ".join(f"`{f}`" for f in s.flags)
        envs = ", ".join(f"`{e}`" for e in s.env)
        rows.append(f"| {flags} | {envs} | {_show(s.default)} | {s.help} |")
    return "\n".join(rows)


def parse_config(parser: argparse.ArgumentParser, role: str,
                 argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    """Parse ``argv`` and build the ``Config``; a bad flag or setting prints one line, exits 2."""
    args = parser.parse_args(list(argv))
    try:
        return load_config(role, args), args
    except ConfigError as exc:
        parser.error(str(exc))


def parse_args_for(role: str, argv: Sequence[str]) -> Config:
    parser = new_parser(f"hubbub {role}")
    add_setting_flags(parser, role)
    return parse_config(parser, role, argv)[0]
