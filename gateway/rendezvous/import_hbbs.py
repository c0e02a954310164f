"""``hubbub import-hbbs db_v2.sqlite3``: bring an hbbs peer table into the cluster's Redis.

Each row's ``id``, ``uuid`` and ``pk`` (and the IP from ``info``) become the durable binding, so
devices keep their IDs and the key checks of hbbs carry over. Existing bindings are kept unless
``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.rendezvous.logic import valid_register_id
from gateway.rendezvous.store import Store
from hubbub.config import add_setting_flags, new_parser, parse_config
from hubbub.errors import HubbubError, RegistryError
from hubbub.ipaddr import normalise_ip
from hubbub.runtime import tool_registry


__all__ = ["main", "read_peers"]


def read_peers(path: Path) -> list[tuple[str, bytes, bytes, str]]:
    """``(id, uuid, pk, ip)`` rows of an hbbs database (read-only).

    Raises:
        HubbubError: the file is not an hbbs database.
    """
    if not path.is_file():
        raise HubbubError(f"no such file: {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise HubbubError(f"cannot open {path}: {exc}") from exc
    try:
        rows = db.execute("select id, uuid, pk, info from peer").fetchall()
    except sqlite3.Error as exc:
        raise HubbubError(f"{path} is not an hbbs database: {exc}") from exc
    finally:
        db.close()
    out = []
    for peer_id, uuid, pk, info in rows:
        ip = ""
        try:
            data = json.loads(info or "{}")
            if isinstance(data, dict):
                ip = str(data.get("ip", ""))
                # hbbs on a dual-stack socket may have stored "::ffff:a.b.c.d".
                ip = normalise_ip(ip)
        except ValueError:
            pass  # not JSON, or not an address: kept as stored
        out.append((str(peer_id), _blob(uuid), _blob(pk), ip))
    return out


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b""


def main(argv: Sequence[str]) -> int:
    parser: argparse.ArgumentParser = new_parser("hubbub import-hbbs",
                                                 "import peers from an hbbs database")
    add_setting_flags(parser, "admin")
    parser.add_argument("database", help="path of db_v2.sqlite3")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace bindings that already exist in the cluster")
    cfg, args = parse_config(parser, "admin", argv)
    try:
        rows = read_peers(Path(args.database))
    except HubbubError as exc:
        sys.stderr.write(f"hubbub import-hbbs: error: {exc}\n")
        return 2

    async def run() -> tuple[int, int, int]:
        async with tool_registry(cfg) as registry:
            store = Store(registry)
            added = kept = skipped = 0
            for peer_id, uuid, pk, ip in rows:
                if not valid_register_id(peer_id) or not uuid:
                    skipped += 1
                    continue
                if await store.import_peer(peer_id, uuid, pk, ip, args.overwrite):
                    added += 1
                else:
                    kept += 1
            return added, kept, skipped

    try:
        added, kept, skipped = asyncio.run(run())
    except RegistryError as exc:
        sys.stderr.write(f"hubbub import-hbbs: error: {exc}\n")
        return 1
    print(f"imported {added} peers, kept {kept} existing, skipped {skipped} invalid")
    return 0
