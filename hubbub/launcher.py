"""``hubbub up``: a local cluster (embedded Redis, gateways, a shard per core) via honcho.

``--redis sentinel`` runs the control plane as a primary, a replica and three Sentinels;
``--redis cluster`` as a three-primary, three-replica Redis Cluster. The settings that point
every process at it go into the environment honcho hands to each process, so the Procfile's
``hubbub redis`` starts the same deployment the gateways and shards look for.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from hubbub.config import Config, add_setting_flags, new_parser, parse_config
from registry.target import RedisTarget


__all__ = ["SENTINEL_PORTS", "CLUSTER_PORTS", "main", "redis_env", "summary"]

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
SENTINEL_PORTS = (26379, 26380, 26381)
CLUSTER_PORTS = tuple(range(7000, 7006))


def redis_env(cfg: Config, mode: str) -> dict[str, str]:
    """Settings for a local ``mode`` control plane (ones the user set are kept)."""
    if mode == "sentinel" and not cfg.redis_sentinels:
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in SENTINEL_PORTS),
                "REDIS_SENTINEL_MASTER": cfg.redis_sentinel_master}
    if mode == "cluster" and not cfg.redis_cluster_nodes:
        return {"REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{p}" for p in CLUSTER_PORTS)}
    return {}


def summary(cfg: Config, gateways: int, shards: int, login: str = "") -> str:
    """What ``hubbub up`` prints; ``login`` says how to log in to the console."""
    ip = cfg.advertised_ip
    rtc = f"{cfg.rtc_min_port}-{cfg.rtc_max_port}"
    lines = [
        f"hubbub local cluster: {gateways} gateway(s), {shards} shard(s), Redis "
        f"{RedisTarget.from_config(cfg).describe()}",
        f"  RustDesk ID server   {ip}:{cfg.rendezvous_port} (TCP+UDP), NAT test "
        f"{ip}:{cfg.nat_port}, WebSocket ws://{ip}:{cfg.ws_port}",
        f"  RustDesk relay       {ip}:{cfg.relay_port} (TCP), WebSocket ws://{ip}:"
        f"{cfg.relay_ws_port}",
        f"  spaces host          {'wss' if cfg.tls else 'ws'}://{ip}:{cfg.spaces_port}  "
        f"(demo: http://localhost:{cfg.spaces_port}/demo)",
        f"  WebRTC media         UDP/TCP {rtc} on {cfg.rtc_announced_ip}",
        "  ops /healthz /livez /readyz /metrics  gateways on 5100.., shards on 5200..",
        "  cluster view         hubbub status",
    ]
    if cfg.console_port:
        lines[-1:-1] = [f"  operator console     {'https' if cfg.tls else 'http'}://{ip}:"
                        f"{cfg.console_port}/  (every gateway serves it)", *login.splitlines()]
    if not cfg.public_ip:
        lines.append("  (clients on other machines: set PUBLIC_IP to this host's address)")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub up", "start a local cluster with honcho")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes (default 2)")
    parser.add_argument("--shards", type=int, default=0,
                        help="shard processes (default: one per core)")
    parser.add_argument("--no-redis", action="store_true",
                        help="use the external Redis the settings name instead of a local one")
    parser.add_argument("--redis", choices=("single", "sentinel", "cluster"), default="single",
                        help="local control plane: one Redis (default), a primary + replica + "
                             "3 Sentinels, or a 3-primary + 3-replica Redis Cluster")
    add_setting_flags(parser, "gateway")
    cfg, args = parse_config(parser, "gateway", argv)
    extra = {} if args.no_redis else redis_env(cfg, args.redis)
    if extra:
        os.environ.update(extra)
        cfg, args = parse_config(parser, "gateway", argv)
    shards = args.shards or cfg.slots
    login = ""
    if cfg.console_port:
        from gateway.console.passwords import login_hint

        login = login_hint(cfg.admin_password, cfg.data_path)
    print(summary(cfg, args.gateways, shards, login), flush=True)
    honcho = shutil.which("honcho")
    if honcho is None:
        sys.stderr.write("hubbub up: error: honcho not found (run ./run.sh)\n")
        return 3
    types = ["gateway", "shard"] if args.no_redis else ["redis", "gateway", "shard"]
    cmd = [honcho, "-f", str(PROCFILE), "-d", os.getcwd(), "start",
           "-c", f"gateway={args.gateways},shard={shards}", *types]
    os.execv(honcho, cmd)
