"""``hubbub status``: the live cluster as Redis sees it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from hubbub.config import add_setting_flags, new_parser, parse_config
from hubbub.contracts.system import Ping, Pong
from hubbub.errors import HubbubError, RegistryUnavailable
from registry import ProcessRecord, RedisTarget, Registry


__all__ = ["format_table", "format_topology", "main"]


def _load(rec: ProcessRecord) -> str:
    load = rec.info.get("load") or {}
    if not isinstance(load, dict):
        return ""
    return " ".join(f"{k}={v}" for k, v in sorted(load.items()))


def _ports(rec: ProcessRecord) -> str:
    ports: list[str] = []
    listen = rec.info.get("ports") or {}
    if isinstance(listen, dict):
        ports += [f"{k}:{v}" for k, v in sorted(listen.items())]
    rtc = rec.info.get("rtc_ports")
    if isinstance(rtc, list) and len(rtc) == 2:
        ports.append(f"rtc:{rtc[0]}-{rtc[1]}")
    ports.append(f"ops:{rec.info.get('ops_port', '?')}")
    return " ".join(ports)


def format_table(records: Sequence[ProcessRecord], rtts: Sequence[str] = ()) -> str:
    header: tuple[str, ...] = ("ROLE", "HOST", "PID", "SLOT", "STATE", "AGE", "PORTS", "LOAD", "ID")
    if rtts:
        header += ("PING",)
    rows: list[tuple[str, ...]] = [header]
    for i, r in enumerate(records):
        slot = r.info.get("slot")
        row = (r.role, r.host, str(r.pid), "-" if slot is None else str(slot), r.state,
               f"{r.age:.0f}s", _ports(r), _load(r), r.id)
        rows.append(row + ((rtts[i],) if rtts else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


async def _ping(reg: Registry, rec: ProcessRecord) -> str:
    start = time.perf_counter()
    try:
        await reg.request(rec.id, Ping(), reply=Pong, timeout=2.0)
    except HubbubError as exc:
        return f"{exc.code}"
    return f"{(time.perf_counter() - start) * 1000:.1f}ms"


def format_topology(topo: dict[str, Any]) -> str:
    """The control plane in one or a few lines: mode, and the primary or the cluster nodes."""
    mode = topo.get("mode", "?")
    if mode == "cluster":
        lines = [f"control plane: Redis Cluster, {len(topo.get('nodes', []))} primaries"]
        for n in topo.get("nodes", []):
            replicas = ",".join(n.get("replicas", [])) or "none"
            lines.append(f"  primary {n['primary']}  slots {n['slots']}  replicas {replicas}")
        return "\n".join(lines)
    replicas = ",".join(topo.get("replicas", [])) or "none"
    if mode == "sentinel":
        return (f"control plane: Redis Sentinel ({topo.get('target', '')}), primary "
                f"{topo.get('primary', '?')}, replicas {replicas}")
    return (f"control plane: {topo.get('target', 'single Redis')} (role "
            f"{topo.get('role', '?')}), replicas {replicas}")


async def _fetch(target: RedisTarget, prefix: str, ping: bool
                 ) -> tuple[list[ProcessRecord], list[str], dict[str, Any]]:
    reg = Registry(target, prefix, "status", "-", presence=False)
    try:
        async with asyncio.timeout(10.0):
            if ping:
                await reg.start()
            topo = await reg.topology()
            records = await reg.processes()
            rtts = list(await asyncio.gather(*(_ping(reg, r) for r in records))) if ping else []
            return records, rtts, topo
    except TimeoutError:
        raise RegistryUnavailable("redis did not answer within 10s") from None
    finally:
        await reg.close()


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub status", "print the live cluster from Redis")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--ping", action="store_true",
                        help="also send each process a request through its inbox and show the RTT")
    add_setting_flags(parser, "status")
    cfg, args = parse_config(parser, "status", argv)
    target = RedisTarget.from_config(cfg)
    try:
        records, rtts, topo = asyncio.run(_fetch(target, cfg.prefix, args.ping))
    except RegistryUnavailable as exc:
        sys.stderr.write(f"hubbub status: cannot reach Redis ({target.describe()}): "
                         f"{str(exc).splitlines()[0]}\n")
        return 1
    if args.json:
        out: list[dict[str, Any]] = [
            dict(r.info, ping=rtts[i]) if rtts else r.info for i, r in enumerate(records)]
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_topology(topo))
        print(format_table(records, rtts))
        print(f"{len(records)} live process(es)")
    return 0
