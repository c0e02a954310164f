"""``hubbub user``: the operator console's users, from the command line.

::

    hubbub user list
    hubbub user add NAME [--role admin|viewer] [--password-stdin]
    hubbub user passwd NAME [--password-stdin]
    hubbub user remove NAME

Same operations as the console's ``/api/users`` (``Accounts``), written to the same audit log
(as user ``cli``). Access to the cluster's Redis (``REDIS_URL``, ``HUBBUB_PREFIX``) is what
authorises them. Without ``--password-stdin`` the password is asked for on a terminal, or
generated and printed once when there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from collections.abc import Sequence

from gateway.console.accounts import ROLES, AccountError, Accounts, check_password
from gateway.console.passwords import generate_password
from hubbub.config import add_setting_flags, new_parser, parse_config
from hubbub.errors import RegistryUnavailable
from registry import Registry
from registry.target import RedisTarget


__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = new_parser("hubbub user", "operator console users")
    add_setting_flags(parser, "admin")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="users and their roles")
    add = sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="viewer")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin")
    pw = sub.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    rm = sub.add_parser("remove", help="remove a user (not the last admin)")
    rm.add_argument("name")
    return parser


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The new password and whether it was generated (and must be shown)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if sys.stdin.isatty():
        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise AccountError("the passwords differ")
        return first, False
    return generate_password(), True


async def _run(args: argparse.Namespace, accounts: Accounts) -> str:
    source = f"cli@{socket.gethostname()}"
    if args.command == "list":
        found = await accounts.users()
        return "\n".join(f"{u.name}\t{u.role}" for u in found) or "(no users)"
    if args.command == "remove":
        await accounts.remove_user(args.name)
        await accounts.audit("cli", "user-remove", args.name, source)
        return f"{args.name} removed"
    password, generated = _password(args)
    check_password(password)
    shown = f" with password {password}" if generated else ""
    if args.command == "add":
        if not await accounts.add_user(args.name, args.role, password):
            raise AccountError(f"{args.name} exists (use passwd)")
        await accounts.audit("cli", "user-add", f"{args.name} ({args.role})", source)
        return f"{args.name} ({args.role}) added{shown}"
    await accounts.set_password(args.name, password)
    await accounts.audit("cli", "user-passwd", args.name, source)
    return f"password of {args.name} changed{shown}"


async def _main(args: argparse.Namespace, target: RedisTarget, prefix: str) -> str:
    reg = Registry(target, prefix, "admin", "-", presence=False)
    try:
        async with asyncio.timeout(15.0):
            accounts = Accounts(reg)
            try:
                return await _run(args, accounts)
            finally:
                accounts.close()
    except TimeoutError:
        raise RegistryUnavailable("redis did not answer in time") from None
    finally:
        await reg.close()


def main(argv: Sequence[str]) -> int:
    cfg, args = parse_config(_parser(), "admin", argv)
    try:
        print(asyncio.run(_main(args, RedisTarget.from_config(cfg), cfg.prefix)))
    except AccountError as exc:
        sys.stderr.write(f"hubbub user: error: {exc}\n")
        return 2
    except RegistryUnavailable as exc:
        sys.stderr.write(f"hubbub user: error: {exc}\n")
        return 1
    return 0
