"""The relay lists in Redis (one set per list, cluster-wide) mirrored into data-dir files.

Redis holds the truth while the cluster runs; after a change every live shard gets a
``ListsChanged`` inbox message, reloads both sets, applies them to its running pairs and rewrites
``blacklist.txt`` / ``blocklist.txt`` in its data dir (atomically, only when the text differs).
Shards also reload every few seconds, so a shard that missed the message catches up.
At start a shard merges the entries of its files into Redis, so lists written by hand for hbbr
keep working.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hubbub.contracts.relay import ListsChanged
from registry import Registry
from shards.relay.lists import LIST_NAMES, MAX_ENTRIES, IpLists, format_list, parse_list


__all__ = ["fetch", "list_key", "merge_files", "modify", "notify_shards", "read_files",
           "write_files"]

log = logging.getLogger("hubbub.relay.lists")


def list_key(registry: Registry, name: str) -> str:
    return registry.key("relay", "list", name)


def _decode(members: Iterable[bytes | str]) -> frozenset[str]:
    return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)


async def fetch(registry: Registry) -> IpLists:
    """Both lists as Redis holds them.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    async with registry.guard("relay_lists"):
        async with registry.redis.pipeline(transaction=False) as p:
            for name in LIST_NAMES:
                p.smembers(list_key(registry, name))
            black, block = await p.execute()
    return IpLists(_decode(black), _decode(block))


async def modify(registry: Registry, name: str, add: Iterable[str] = (),
                 remove: Iterable[str] = (), clear: bool = False) -> frozenset[str]:
    """Change one list (entries already normalised), tell every shard; returns the new list.

    Raises:
        ValueError: unknown list name or the list would exceed ``MAX_ENTRIES``.
        RegistryUnavailable: Redis did not answer.
    """
    if name not in LIST_NAMES:
        raise ValueError(f"unknown list {name!r}")
    key = list_key(registry, name)
    add, remove = list(add), list(remove)
    async with registry.guard("relay_lists"):
        if add and await registry.redis.scard(key) + len(add) > MAX_ENTRIES:
            raise ValueError(f"{name} would exceed {MAX_ENTRIES} entries")
        def change(p: Any) -> None:
            if clear:
                p.delete(key)
            if add:
                p.sadd(key, *add)
            if remove:
                p.srem(key, *remove)
            p.smembers(key)
        # Answered only once the replicas hold the change (REDIS_MIN_REPLICAS).
        result = await registry.durable(key, change)
    await notify_shards(registry, name)
    return _decode(result[-1])


async def notify_shards(registry: Registry, name: str) -> int:
    """Tell every live shard to reload the lists; returns how many were told.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    told = 0
    for rec in await registry.processes("shard"):
        if await registry.send(rec.id, ListsChanged(name)):
            told += 1
    return told


def read_files(data_dir: Path) -> IpLists:
    """The lists in ``data_dir`` (missing or unreadable files count as empty)."""
    found: dict[str, frozenset[str]] = {}
    for name in LIST_NAMES:
        try:
            found[name] = frozenset(parse_list((data_dir / f"{name}.txt").read_text("utf-8",
                                                                               "replace")))
        except OSError:
            found[name] = frozenset()
    return IpLists(found["blacklist"], found["blocklist"])


def write_files(data_dir: Path, lists: IpLists) -> None:
    """Rewrite the files whose content differs (write aside, then rename)."""
    for name, entries in (("blacklist", lists.blacklist), ("blocklist", lists.blocklist)):
        path = data_dir / f"{name}.txt"
        text = format_list(entries)
        with contextlib.suppress(OSError):
            if path.read_text("utf-8", "replace") == text:
                continue
        if not text and not path.exists():
            continue
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.txt.{os.getpid()}")
            tmp.write_text(text, "utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


async def merge_files(registry: Registry, lists: IpLists) -> None:
    """Add file entries to Redis (no notice: every shard loads after merging).

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    if not lists.blacklist and not lists.blocklist:
        return
    async with registry.guard("relay_lists"):
        async with registry.redis.pipeline(transaction=False) as p:
            if lists.blacklist:
                p.sadd(list_key(registry, "blacklist"), *lists.blacklist)
            if lists.blocklist:
                p.sadd(list_key(registry, "blocklist"), *lists.blocklist)
            await p.execute()
