"""The relay's IP lists: ``blacklist`` (rate-limited to LIMIT_SPEED) and ``blocklist`` (refused).

Pure functions over text and sets; ``store`` keeps them in Redis and in the data-dir files.
Addresses are normalised before they are stored or compared, so ``::ffff:a.b.c.d`` (what a
dual-stack socket reports for an IPv4 peer) matches an ``a.b.c.d`` entry everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hubbub.ipaddr import normalise_ip


__all__ = ["LIST_NAMES", "MAX_ENTRIES", "IpLists", "format_list", "parse_list"]

LIST_NAMES = ("blacklist", "blocklist")
MAX_ENTRIES = 100_000
"""Cap per list: the sets live in every shard's memory."""


def parse_list(text: str) -> set[str]:
    """Entries of a list file: one IP per line, anything after the first space ignored.

    Lines that are empty, comments or not an IP address are skipped.
    """
    out: set[str] = set()
    for line in text.splitlines():
        word = line.strip().split(" ", 1)[0].split("\t", 1)[0]
        if not word or word.startswith("#"):
            continue
        try:
            out.add(normalise_ip(word))
        except ValueError:
            continue
        if len(out) >= MAX_ENTRIES:
            break
    return out


def format_list(entries: Iterable[str]) -> str:
    """File text for ``entries`` (sorted, one per line)."""
    items = sorted(entries)
    return "".join(f"{ip}\n" for ip in items)


@dataclass(frozen=True)
class IpLists:
    """One consistent snapshot of both lists."""

    blacklist: frozenset[str] = frozenset()
    blocklist: frozenset[str] = frozenset()

    def blocked(self, ip: str) -> bool:
        return ip in self.blocklist

    def limited(self, ip: str) -> bool:
        return ip in self.blacklist
