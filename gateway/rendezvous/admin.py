"""``hubbub admin``: the ID server's operator commands (replaces hbbs's loopback console).

Commands act on the whole cluster: settings live in Redis (every gateway reloads them at once),
per-process state (IP limiter, punch log) is gathered from every gateway through its inbox.
Reached through Redis (``hubbub admin``, needs the cluster's Redis URL) or through any
gateway's ops endpoint (``POST /rendezvous/admin`` with ``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from gateway.rendezvous.limits import IpLimiter
from gateway.rendezvous.logic import valid_custom_id
from gateway.rendezvous.records import Live
from gateway.rendezvous.store import CHANGE_EXISTS, CHANGE_OK, Store
from hubbub.config import Config, add_setting_flags, new_parser, parse_config
from hubbub.contracts.rendezvous import AdminCommand, AdminReply
from hubbub.errors import HubbubError, RegistryError
from hubbub.ops import Request, Response
from hubbub.runtime import tool_registry
from registry import Registry


__all__ = ["HELP", "AdminView", "change_id", "local_command", "main", "ops_handler",
           "run_command"]

HELP = """commands:
  relay-servers, rs [host[:port],...|-]   show or set the relay list ('-': back to config)
  always-use-relay, aur [Y|N|-]           show or set ALWAYS_USE_RELAY ('-': back to config)
  ip-blocker, ib [<ip> [-]]               tracked IPs per gateway; one IP's counters; '-' clears
  punch-requests, pr [<n>|-]              last n punch requests (default 20); '-' clears
  ip-changes, ic [<id>]                   IDs seen from several IPs in the last 6 minutes
  id-changes, idc [<n>]                   last n ID changes (change ID)
  peer <id>                               registration and liveness of one ID
  remove <id>                             forget an ID's binding on every gateway at once
  change-id <id> <new id>                 move a device's registration to a new ID
  stats                                   peers, connections and streams per gateway
  help, h                                 this text"""

_ALIASES = {"rs": "relay-servers", "aur": "always-use-relay", "ib": "ip-blocker",
            "pr": "punch-requests", "ic": "ip-changes", "idc": "id-changes",
            "h": "help"}


class AdminView(Protocol):
    """The per-process state admin commands read or clear (the rendezvous core has it)."""

    ip_limiter: IpLimiter

    @property
    def punch_log(self) -> deque[str]: ...

    def ip_changes(self) -> Iterable[tuple[str, dict[str, int]]]: ...

    def forget(self, peer_id: str) -> None: ...


def local_command(svc: AdminView, cmd: str, args: list[str]) -> AdminReply:
    """Per-process part of a command, run inside a gateway (inbox ``AdminCommand``)."""
    now = time.time()
    if cmd == "ip-blocker":
        if not args:
            return AdminReply(True, count=len(svc.ip_limiter.map))
        ip = args[0]
        if len(args) > 1 and args[1] == "-":
            svc.ip_limiter.map.pop(ip)
            return AdminReply(True, lines=(f"{ip} cleared",))
        text = svc.ip_limiter.describe(ip, now)
        return AdminReply(True, lines=(f"{ip} {text}",) if text else ())
    if cmd == "ip-changes":
        lines = []
        for peer_id, seen in svc.ip_changes():
            if len(seen) > 1 and (not args or args[0] == peer_id):
                ips = ", ".join(f"{ip}: {n}" for ip, n in seen.items())
                lines.append(f"{peer_id}: {{{ips}}}")
        return AdminReply(True, lines=tuple(lines))
    if cmd == "punch-requests":
        if args and args[0] == "-":
            svc.punch_log.clear()
            return AdminReply(True)
        return AdminReply(True, lines=tuple(svc.punch_log))
    if cmd == "forget-peer" and args:
        svc.forget(args[0])
        return AdminReply(True)
    return AdminReply(False, text=f"unknown command {cmd!r}")


async def _gather(registry: Registry, cmd: str, args: list[str]) -> list[tuple[str, AdminReply]]:
    """Every gateway's reply to ``cmd``, with its process id."""
    gateways = await registry.processes("gateway")

    async def one(pid: str) -> tuple[str, AdminReply]:
        try:
            reply = await registry.request(pid, AdminCommand(cmd, tuple(args)),
                                           reply=AdminReply, timeout=2.0)
        except HubbubError as exc:
            return pid, AdminReply(False, text=str(exc))
        return pid, reply

    return list(await asyncio.gather(*(one(g.id) for g in gateways)))


async def run_command(registry: Registry, store: Store, argv: Sequence[str],
                      cfg_relays: Sequence[str] = (), cfg_aur: bool = False) -> str:
    """Run one admin command against the cluster; returns the text to print.

    Raises:
        RegistryError: Redis is unreachable.
    """
    if not argv:
        return HELP
    cmd = _ALIASES.get(argv[0], argv[0])
    args = list(argv[1:])
    if cmd == "help":
        return HELP
    if cmd == "relay-servers":
        if args:
            value = None if args[0] == "-" else ",".join(
                s.strip() for s in ",".join(args).split(",") if s.strip())
            await store.set_admin("relay_servers", value)
        settings = await store.admin_settings()
        if "relay_servers" in settings:
            return settings["relay_servers"] or "(none: clients use the ID host)"
        return ",".join(cfg_relays) or "(automatic: least-loaded relay host)"
    if cmd == "always-use-relay":
        if args:
            flag = args[0].upper()
            if flag not in ("Y", "N", "-"):
                return "usage: always-use-relay [Y|N|-]"
            await store.set_admin("always_use_relay", None if flag == "-" else flag)
        settings = await store.admin_settings()
        return settings.get("always_use_relay") or ("Y" if cfg_aur else "N")
    if cmd == "ip-blocker":
        lines = []
        for pid, r in await _gather(registry, cmd, args):
            if not r.ok:
                lines.append(f"{pid}: error {r.text}")
            elif r.count is not None:
                lines.append(f"{pid}: {r.count} tracked IPs")
            else:
                lines += [f"{pid}: {line}" for line in r.lines]
        return "\n".join(lines) or "(no gateways)"
    if cmd == "punch-requests":
        count = 20
        if args and args[0] != "-":
            with contextlib.suppress(ValueError):
                count = max(1, int(args[0]))
        replies = await _gather(registry, cmd, args[:1] if args == ["-"] else [])
        merged = sorted(line for _, r in replies for line in r.lines)
        if args == ["-"]:
            return "cleared"
        return "\n".join(merged[-count:]) or "(none)"
    if cmd == "ip-changes":
        replies = await _gather(registry, cmd, args[:1])
        merged = sorted({line for _, r in replies for line in r.lines})
        return "\n".join(merged) or "(none)"
    if cmd == "id-changes":
        count = 20
        if args:
            with contextlib.suppress(ValueError):
                count = max(1, int(args[0]))
        rows = await store.id_history(count)
        out = []
        for row in rows:
            parts = row.split(" ")
            if len(parts) == 3 and parts[2].isdigit():
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(parts[2])))
                out.append(f"{stamp} {parts[0]} -> {parts[1]}")
        return "\n".join(out) or "(none)"
    if cmd == "stats":
        lines = []
        for proc in await registry.processes("gateway"):
            load = proc.info.get("load") or {}
            lines.append(f"{proc.id} ({proc.state}): {load.get('rd_peers', 0)} peers heard, "
                         f"{load.get('rd_conns', 0)} connections, "
                         f"{load.get('rd_streams', 0)} TCP/WS registrations")
        return "\n".join(lines) or "(no gateways)"
    if cmd == "change-id":
        if len(args) != 2:
            return "usage: change-id <id> <new id>"
        return (await change_id(registry, store, args[0], args[1]))[1]
    if cmd == "remove":
        if len(args) != 1:
            return "usage: remove <id>"
        if not await store.remove_peer(args[0]):
            return f"{args[0]}: not registered"
        return f"{args[0]}: removed (a device still running under it registers it again)"
    if cmd == "peer":
        if not args:
            return "usage: peer <id>"
        rec, live = await store.lookup(args[0])
        if rec is None:
            return f"{args[0]}: not registered"
        return _describe(args[0], rec.uuid, rec.pk, rec.ip, live)
    return f"unknown command {argv[0]!r}\n{HELP}"


async def change_id(registry: Registry, store: Store, old_id: str,
                    new_id: str) -> tuple[bool, str]:
    """An operator's change ID: the device's binding (uuid, key) moves to ``new_id`` under the
    client's own rules (format, no taking another device's ID); every gateway forgets ``old_id``.

    Returns:
        Whether the ID changed, and a line saying what happened.
    """
    if not valid_custom_id(new_id):
        return False, f"{new_id}: invalid ID (a letter, then 5-15 letters, digits, _ or -)"
    rec = await store.peer(old_id)
    if rec is None:
        return False, f"{old_id}: not registered"
    res = await store.change_id(old_id, new_id, rec.uuid)
    if res == CHANGE_EXISTS:
        return False, f"{new_id}: already taken by another device"
    if res != CHANGE_OK:
        return False, f"{old_id}: changed meanwhile, try again"
    await _gather(registry, "forget-peer", [old_id])
    return True, f"{old_id} -> {new_id}"


def _describe(peer_id: str, uuid: bytes, pk: bytes, ip: str, live: Live | None) -> str:
    lines = [f"id: {peer_id}", f"uuid: {uuid.decode(errors='replace')}",
             f"pk: {pk.hex() or '-'}", f"registered ip: {ip}"]
    if live is None or not live.online(time.time()):
        lines.append("online: no")
    else:
        mode = "udp" if live.mode == 0 else "tcp/ws"
        lines.append(f"online: yes ({mode} {live.ip}:{live.port}, "
                     f"{time.time() - live.seen:.0f}s ago, via {live.owner})")
    return "\n".join(lines)


def ops_handler(registry: Registry, store: Store, cfg: Config) -> Any:
    """The ``/rendezvous/admin`` ops route: body is a JSON list of words (or plain text)."""

    async def handle(req: Request) -> Response:
        body = req.body.decode(errors="replace").strip()
        argv: list[str]
        try:
            parsed = json.loads(body) if body.startswith("[") else body.split()
            argv = [str(a) for a in parsed]
        except ValueError:
            return Response(400, b"body must be a JSON list of words or plain words\n")
        try:
            text = await run_command(registry, store, argv, cfg.relay_servers,
                                     cfg.always_use_relay)
        except RegistryError as exc:
            return Response(503, f"{exc}\n".encode())
        return Response(200, (text + "\n").encode())

    return handle


def main(argv: Sequence[str]) -> int:
    parser = new_parser("hubbub admin", "run an ID-server admin command on the cluster")
    add_setting_flags(parser, "admin")
    parser.add_argument("words", nargs="*", help="command and arguments (see 'help')")
    cfg, args = parse_config(parser, "admin", argv)

    async def run() -> str:
        async with tool_registry(cfg) as registry:
            return await run_command(registry, Store(registry), args.words, cfg.relay_servers,
                                     cfg.always_use_relay)

    try:
        print(asyncio.run(run()))
    except RegistryError as exc:
        sys.stderr.write(f"hubbub admin: error: {exc}\n")
        return 1
    return 0
