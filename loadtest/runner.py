"""``hubbub loadtest``: run locust scenarios against a local throw-away cluster or a deployment.

    hubbub loadtest spaces -u 50 -r 10 -t 60s            # headless, own cluster on free ports
    hubbub loadtest rustdesk relay --gateways 2 --shards 2
    hubbub loadtest all --web                            # watch it in locust's web UI
    hubbub loadtest rustdesk --target 127.0.0.1          # a cluster already running (hubbub up)
    hubbub loadtest relay -- --json-file out             # options after -- go to locust
    hubbub loadtest spaces --ramp --ramp-step 20 -t 10m  # add users until a limit breaks

Scenarios map to locust user classes; locust runs as a subprocess (it monkey-patches the standard
library with gevent), its exit code is the command's: 1 when a threshold failed. Every run is
bounded: ``--run-time`` plus a grace period, after which locust is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hubbub.errors import LoadTestError
from loadtest.cluster import LocalCluster
from loadtest.targets import Target


__all__ = ["SCENARIOS", "locust_command", "main", "parse_duration"]

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
RAMPFILE = HERE / "locustfile_ramp.py"

SCENARIOS: dict[str, tuple[str, ...]] = {
    "rustdesk": ("DeviceUser", "WebDeviceUser", "ControllerUser", "WebControllerUser"),
    "devices": ("DeviceUser",),
    "wsdevices": ("WebDeviceUser",),
    "controllers": ("ControllerUser",),
    "web": ("WebControllerUser",),
    "relay": ("RelayPairUser",),
    "spaces": ("PlayerUser",),
    "all": ("DeviceUser", "WebDeviceUser", "ControllerUser", "WebControllerUser", "RelayPairUser",
            "PlayerUser"),
}

# Options forwarded to the locust users (see loadtest/users.py) when given.
_FORWARD = ("licence_key", "heartbeat", "online_every", "list_open", "online_peers",
            "relay_ratio", "relay_only_ratio", "lan_ratio", "payload", "connect_every",
            "relay_chunk", "space_size", "move_hz", "chat_every", "max_fail_ratio", "max_p95_ms",
            "max_avg_ms", "min_requests", "ramp_step", "ramp_every", "ramp_max",
            "ramp_stop_p95_ms", "ramp_stop_fail_ratio")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``1h30m`` -> seconds (locust's ``-t`` syntax)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (e.g. 30s, 2m, 1h30m)")
    scale = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * scale[u] for n, u in parts))


def locust_command(target: Target, users_classes: Sequence[str], args: argparse.Namespace,
                   csv_prefix: str | None = None) -> list[str]:
    """The locust command line for ``target`` and the chosen user classes."""
    locustfile = RAMPFILE if getattr(args, "ramp", False) else LOCUSTFILE
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--host", target.host,
           "--rendezvous-port", str(target.rendezvous_port),
           "--relay-port", str(target.relay_port), "--spaces-port", str(target.spaces_port),
           "-t", args.run_time,
           "--stop-timeout", "5", "--loglevel", args.loglevel]
    if args.web:
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port), "--autostart",
                "--autoquit", str(args.autoquit)]
    else:
        cmd += ["--headless", "--only-summary"]
    if not getattr(args, "ramp", False):
        cmd += ["-u", str(args.users), "-r", str(args.spawn_rate)]
    if args.processes:
        cmd += ["--processes", str(args.processes)]
    if args.one_ip:
        cmd += ["--one-ip"]
    if csv_prefix:
        cmd += ["--csv", csv_prefix, "--csv-full-history"]
    if target.licence_key and getattr(args, "licence_key", None) is None:
        cmd += ["--licence-key", target.licence_key]
    for name in _FORWARD:
        value = getattr(args, name, None)
        if value is not None:
            cmd += ["--" + name.replace("_", "-"), str(value)]
    return [*cmd, *users_classes]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubbub loadtest",
        description="run locust scenarios against a local cluster (started on free ports) or a "
                    "running deployment")
    p.add_argument("scenarios", nargs="*", default=["all"],
                   help=f"one or more of {', '.join(SCENARIOS)} (default all)")
    p.add_argument("-u", "--users", type=int, default=20, help="peak number of users")
    p.add_argument("-r", "--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("-t", "--run-time", default="30s", help="run time (30s, 2m, 1h30m)")
    p.add_argument("--processes", type=int, default=0,
                   help="locust worker processes (-1: one per core; 0: a single process)")
    p.add_argument("--web", action="store_true",
                   help="serve locust's web UI on 127.0.0.1 (autostart, quits after the run)")
    p.add_argument("--web-port", type=int, default=8089)
    p.add_argument("--autoquit", type=int, default=300,
                   help="with --web: seconds the UI stays up after the run")
    p.add_argument("--ramp", action="store_true",
                   help="stepped ramp instead of -u/-r: add --ramp-step users every --ramp-every "
                        "s until a limit breaks; prints the capacity")
    p.add_argument("--csv", metavar="PREFIX", help="write locust CSV files with this prefix")
    p.add_argument("--loglevel", default="WARNING", help="locust log level")
    p.add_argument("--one-ip", action="store_true",
                   help="all clients from 127.0.0.1 (default: one 127/8 address per client)")
    cl = p.add_argument_group("cluster (ignored with --target)")
    cl.add_argument("--target", metavar="HOST",
                    help="load a running deployment at HOST (loopback only), start none")
    cl.add_argument("--rendezvous-port", type=int, default=21116)
    cl.add_argument("--relay-port", type=int, default=21117)
    cl.add_argument("--spaces-port", type=int, default=4000)
    cl.add_argument("--gateways", type=int, default=1, help="gateways of the local cluster")
    cl.add_argument("--shards", type=int, default=1, help="shards of the local cluster")
    cl.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="setting for the local cluster's processes (repeatable), e.g. "
                         "SINGLE_BANDWIDTH=0")
    u = p.add_argument_group("scenario knobs (see loadtest/users.py; defaults there)")
    for name in _FORWARD:
        kind = str if name == "licence_key" else (int if name in (
            "online_peers", "payload", "relay_chunk", "space_size", "min_requests", "ramp_step",
            "ramp_max") else float)
        u.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    return p


_LOOPBACK = ("127.", "::1", "localhost")


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to locust unchanged
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    classes: list[str] = []
    for name in args.scenarios:
        if name not in SCENARIOS:
            sys.stderr.write(f"hubbub loadtest: error: unknown scenario {name!r} "
                             f"(choose from {', '.join(SCENARIOS)})\n")
            return 2
        classes += [c for c in SCENARIOS[name] if c not in classes]
    try:
        seconds = parse_duration(args.run_time)
    except ValueError as exc:
        sys.stderr.write(f"hubbub loadtest: error: {exc}\n")
        return 2
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.stderr.write(f"hubbub loadtest: error: --env expects KEY=VALUE, got {item!r}\n")
            return 2
        env[key] = value
    limit = seconds + 30 + (args.autoquit if args.web else 0)
    if args.target:
        if not args.target.startswith(_LOOPBACK):
            sys.stderr.write("hubbub loadtest: error: --target must be a loopback address\n")
            return 2
        target = Target(args.target, args.rendezvous_port, args.relay_port, args.spaces_port)
        return _run(locust_command(target, classes, args, args.csv) + extra, limit)
    try:
        with LocalCluster(gateways=args.gateways, shards=args.shards, env=env) as cluster:
            t = cluster.target
            print(f"hubbub loadtest: cluster of {args.gateways} gateway(s) and {args.shards} "
                  f"shard(s): rendezvous {t.host}:{t.rendezvous_port}, relay {t.relay_port}, "
                  f"spaces {t.spaces_port}", flush=True)
            if args.web:
                print(f"hubbub loadtest: web UI on http://127.0.0.1:{args.web_port}/", flush=True)
            return _run(locust_command(t, classes, args, args.csv) + extra, limit)
    except LoadTestError as exc:
        sys.stderr.write(f"hubbub loadtest: error: {exc}\n")
        return 3


def _run(cmd: list[str], limit: float) -> int:
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        sys.stderr.write("hubbub loadtest: locust overran its time limit; stopped\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
