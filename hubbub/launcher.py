"""``hubbub up``: a local cluster (embedded Redis, gateways, a shard per core) via honcho."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from hubbub.config import Config, add_setting_flags, new_parser, parse_config


__all__ = ["main", "summary"]

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def summary(cfg: Config, gateways: int, shards: int) -> str:
    ip = cfg.advertised_ip
    rtc = f"{cfg.rtc_min_port}-{cfg.rtc_max_port}"
    lines = [
        f"hubbub local cluster: {gateways} gateway(s), {shards} shard(s), Redis {cfg.redis_url}",
        f"  RustDesk ID server   {ip}:{cfg.rendezvous_port} (TCP+UDP), NAT test "
        f"{ip}:{cfg.nat_port}, WebSocket ws://{ip}:{cfg.ws_port}",
        f"  RustDesk relay       {ip}:{cfg.relay_port} (TCP), WebSocket ws://{ip}:"
        f"{cfg.relay_ws_port}",
        f"  spaces host          {'wss' if cfg.tls else 'ws'}://{ip}:{cfg.spaces_port}  "
        f"(demo: http://localhost:{cfg.spaces_port}/demo)",
        f"  WebRTC media         UDP/TCP {rtc} on {cfg.rtc_announced_ip}",
        "  ops /healthz /metrics  gateways on 5100.., shards on 5200..",
        "  cluster view         hubbub status",
    ]
    if not cfg.public_ip:
        lines.append("  (clients on other machines: set PUBLIC_IP to this host's address)")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub up", "start a local cluster with honcho")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes (default 2)")
    parser.add_argument("--shards", type=int, default=0,
                        help="shard processes (default: one per core)")
    parser.add_argument("--no-redis", action="store_true",
                        help="use the Redis at REDIS_URL instead of the embedded one")
    add_setting_flags(parser, "gateway")
    cfg, args = parse_config(parser, "gateway", argv)
    shards = args.shards or cfg.slots
    print(summary(cfg, args.gateways, shards), flush=True)
    honcho = shutil.which("honcho")
    if honcho is None:
        sys.stderr.write("hubbub up: error: honcho not found (run ./run.sh)\n")
        return 3
    types = ["gateway", "shard"] if args.no_redis else ["redis", "gateway", "shard"]
    cmd = [honcho, "-f", str(PROCFILE), "-d", os.getcwd(), "start",
           "-c", f"gateway={args.gateways},shard={shards}", *types]
    os.execv(honcho, cmd)
