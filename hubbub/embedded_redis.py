"""``hubbub redis``: run redis-server for a local cluster, durable (AOF, fsync every second).

It listens where ``REDIS_URL`` points (loopback only) and keeps its files in ``<data>/redis``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from hubbub.config import add_setting_flags, new_parser, parse_config
from hubbub.errors import ConfigError


__all__ = ["main", "redis_argv"]


def redis_argv(redis_url: str, data_dir: str) -> list[str]:
    """The redis-server command line for the embedded Redis."""
    url = urlparse(redis_url)
    host = url.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"invalid value for REDIS_URL: the embedded Redis listens on loopback "
                          f"only, not {host}")
    path = Path(data_dir, "redis").resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [server, "--bind", "127.0.0.1" if host == "localhost" else host,
            "--port", str(url.port or 6379), "--dir", str(path),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub redis", "run the embedded Redis")
    add_setting_flags(parser, "redis")
    cfg, _ = parse_config(parser, "redis", argv)
    try:
        args = redis_argv(cfg.redis_url, cfg.data_dir)
    except ConfigError as exc:
        parser.error(str(exc))
    if not os.path.exists(args[0]):
        sys.stderr.write("hubbub redis: error: redis-server not found (run ./run.sh once)\n")
        return 3
    os.execv(args[0], args)
