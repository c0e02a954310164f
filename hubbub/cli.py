"""The ``hubbub`` console script: one sub-command per process role or tool.

Sub-commands are looked up lazily so that ``hubbub status`` does not import aiortc.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence


__all__ = ["COMMANDS", "main"]

# name -> (module with a ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.main", "run a gateway (RustDesk ID server, spaces signalling)"),
    "shard": ("shards.main", "run a relay/media shard (one per core)"),
    "status": ("hubbub.status", "print the live cluster from Redis"),
    "redis": ("hubbub.embedded_redis", "run the embedded Redis (AOF under the data dir)"),
    "up": ("hubbub.launcher", "start a local cluster: embedded Redis, gateways, shards"),
    "config": ("hubbub.config_cmd", "print the configuration table"),
    "bench": ("loadtest.bench", "run every benchmark; Markdown table, CSV and plot"),
    "loadtest": ("loadtest.runner", "run locust scenarios against a local or running cluster"),
    "relay": ("shards.relay.cli", "relay admin: blacklist/blocklist, usage"),
    "keygen": ("hubbub.keys", "print the RustDesk server key pair (created if missing)"),
    "import-hbbs": ("gateway.rendezvous.import_hbbs", "import peers from an hbbs db_v2.sqlite3"),
    "admin": ("gateway.rendezvous.admin", "ID-server admin commands (relays, limits, logs)"),
    "user": ("gateway.console.cli", "operator console users: add, passwd, remove, list"),
}


# Commands that need the ``loadtest`` extra, which a runtime-only install leaves out.
LOADTEST_COMMANDS = ("bench", "loadtest")
LOADTEST_MODULES = ("locust", "websocket", "matplotlib")


def _missing_loadtest_extra() -> list[str]:
    return [m for m in LOADTEST_MODULES if importlib.util.find_spec(m) is None]


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: hubbub COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"hubbub: error: unknown command {name!r} (see 'hubbub --help')\n")
        return 2
    if name in LOADTEST_COMMANDS and (missing := _missing_loadtest_extra()):
        sys.stderr.write(f"hubbub {name}: needs the load-test tools ({', '.join(missing)} "
                         "missing): run scripts/setup.sh --loadtest, or pip install "
                         "'hubbub[loadtest]'\n")
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code: int = module.main(rest)
    return code
