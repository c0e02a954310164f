"""``hubbub relay``: run-time admin of the relay (hbbr's console commands, cluster-wide).

::

    hubbub relay blacklist list|add IP...|remove IP...|remove all
    hubbub relay blocklist list|add IP...|remove IP...|remove all
    hubbub relay usage [--json]

The lists live in Redis (every shard applies a change at once, running pairs included, and
mirrors it into its data dir's ``blacklist.txt`` / ``blocklist.txt``); ``usage`` asks every live
shard for its pairs. Access to the cluster's Redis (``REDIS_URL``, ``HUBBUB_PREFIX``) is what
authorises these commands.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from hubbub.config import add_setting_flags, new_parser, parse_config
from hubbub.contracts.relay import UsageReply, UsageRequest
from hubbub.errors import HubbubError, RegistryUnavailable
from hubbub.ipaddr import normalise_ip
from registry import RedisTarget, Registry
from shards.relay import store
from shards.relay.lists import LIST_NAMES


__all__ = ["format_usage", "gather_usage", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = new_parser("hubbub relay", "relay admin: black/block lists and usage")
    add_setting_flags(parser, "admin")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in LIST_NAMES:
        p = sub.add_parser(name, help=("IPs limited to LIMIT_SPEED" if name == "blacklist"
                                       else "IPs refused, running pairs closed"))
        p.add_argument("action", choices=("list", "add", "remove"))
        p.add_argument("ips", nargs="*", metavar="IP")
    u = sub.add_parser("usage", help="active pairs of every shard")
    u.add_argument("--json", action="store_true")
    return parser


def format_usage(replies: Sequence[dict[str, Any]]) -> str:
    """hbbr's ``usage`` lines, one per pair: ``a <-> b: <s>s <MB>MB <peak>kb/s <avg> <cur>``."""
    lines = []
    total = 0
    for reply in replies:
        for row in reply.get("pairs", []):
            total += 1
            flag = " limited" if row.get("limited") else ""
            lines.append(f"{row['a']} <-> {row['b']}: {row['elapsed']:.0f}s "
                         f"{row['total_mb']:.2f}MB {row['peak_kbps']:.0f}kb/s "
                         f"{row['avg_kbps']:.0f}kb/s {row['current_kbps']:.0f}kb/s "
                         f"{row['mode']}{flag} [{reply.get('shard', '?')}]")
    waiting = sum(int(r.get("waiting", 0)) for r in replies)
    lines.append(f"{total} pair(s), {waiting} waiting, {len(replies)} shard(s)")
    return "\n".join(lines)


async def gather_usage(reg: Registry) -> tuple[list[dict[str, Any]], list[str]]:
    """Every live shard's ``relay.usage`` reply (asked in parallel), and a line per shard that
    did not answer.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    shards = await reg.processes("shard")

    async def one(rec_id: str) -> dict[str, Any] | str:
        try:
            reply = await reg.request(rec_id, UsageRequest(), reply=UsageReply, timeout=2.0)
        except HubbubError as exc:
            return f"{rec_id}: {exc}"
        return dataclasses.asdict(reply)

    results = await asyncio.gather(*(one(rec.id) for rec in shards))
    return ([r for r in results if isinstance(r, dict)],
            [r for r in results if isinstance(r, str)])


async def _run(args: argparse.Namespace, reg: Registry) -> int:
    if args.command == "usage":
        await reg.start()
        if not await reg.wait_ready(5.0):
            raise RegistryUnavailable("redis did not answer within 5s")
        replies, errors = await gather_usage(reg)
        for line in errors:
            sys.stderr.write(line + "\n")
        if args.json:
            print(orjson.dumps(replies, option=orjson.OPT_INDENT_2).decode())
        else:
            print(format_usage(replies))
        return 0
    name = args.command
    if args.action == "list":
        lists = await store.fetch(reg)
        entries = lists.blacklist if name == "blacklist" else lists.blocklist
        for ip in sorted(entries):
            print(ip)
        return 0
    if not args.ips:
        sys.stderr.write(f"hubbub relay {name} {args.action}: give at least one IP\n")
        return 2
    clear = args.action == "remove" and args.ips == ["all"]
    ips: list[str] = []
    if not clear:
        for raw in args.ips:
            for part in raw.split("|"):  # hbbr's console takes ip|ip|ip
                try:
                    ips.append(normalise_ip(part))
                except ValueError:
                    sys.stderr.write(f"hubbub relay: error: not an IP address: {part!r}\n")
                    return 2
    try:
        entries = await store.modify(reg, name, add=ips if args.action == "add" else (),
                                     remove=ips if args.action == "remove" else (), clear=clear)
    except ValueError as exc:
        sys.stderr.write(f"hubbub relay: error: {exc}\n")
        return 2
    print(f"{name}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


async def _main(args: argparse.Namespace, url: RedisTarget, prefix: str) -> int:
    reg = Registry(url, prefix, "admin", "-", presence=False)
    try:
        async with asyncio.timeout(15.0):
            return await _run(args, reg)
    except TimeoutError:
        raise RegistryUnavailable("redis did not answer in time") from None
    finally:
        await reg.close()


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    cfg, args = parse_config(parser, "admin", argv)
    try:
        return asyncio.run(_main(args, RedisTarget.from_config(cfg), cfg.prefix))
    except RegistryUnavailable as exc:
        sys.stderr.write(f"hubbub relay: error: {exc}\n")
        return 1
