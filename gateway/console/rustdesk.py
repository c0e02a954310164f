"""The RustDesk side of the console: devices, rates, relay pairs and lists, the server key.

Operations go through the same functions as the command-line admin tools: ``hubbub admin
change-id`` (``gateway.rendezvous.admin.change_id``), ``hubbub relay blocklist|blacklist``
(``shards.relay.store.modify``) and ``hubbub relay usage`` (``gather_usage``).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from gateway.console.keys import console_key, json_object
from gateway.console.scan import HOLE, scan_parts
from gateway.rendezvous.admin import change_id
from gateway.rendezvous.records import Live, PeerRecord
from gateway.rendezvous.store import Store
from hubbub.ipaddr import normalise_ip
from registry import Registry
from shards.relay import store as relay_store
from shards.relay.cli import gather_usage
from shards.relay.lists import LIST_NAMES


__all__ = ["change_device_id", "device_json", "edit_list", "fingerprint", "relay_view",
           "search_devices", "summary"]

MAX_RESULTS = 20
SEARCH_BUDGET = 0.5
"""Seconds a prefix search may scan keys for."""
MAX_QUERY = 64


def fingerprint(pk: bytes) -> str:
    """SHA-256 of the device's public key, base64 without padding (as ssh shows keys)."""
    if not pk:
        return ""
    return "SHA256:" + base64.b64encode(hashlib.sha256(pk).digest()).decode().rstrip("=")


def device_json(peer_id: str, rec: PeerRecord, live: Live | None, now: float) -> dict[str, Any]:
    online = live is not None and live.online(now)
    out: dict[str, Any] = {
        "id": peer_id, "online": online, "registered_ip": rec.ip,
        "fingerprint": fingerprint(rec.pk), "last_seen": None, "address": None, "mode": None,
        "via": None}
    if live is not None:
        out.update(last_seen=live.seen, address=f"{live.ip}:{live.port}",
                   mode="udp" if live.mode == 0 else "tcp/ws", via=live.owner)
    return out


async def search_devices(store: Store, query: str) -> list[dict[str, Any]]:
    """Devices whose ID is ``query`` or starts with it (at most ``MAX_RESULTS``).

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    query = query.strip()[:MAX_QUERY]
    if not query:
        return []
    found, _, _ = await scan_parts(store.registry, store.peer_key(HOLE), query,
                                   limit=MAX_RESULTS * 4, budget=SEARCH_BUDGET,
                                   op="console_search")
    ids = [query, *found]
    now = time.time()
    out = []
    for peer_id in sorted(set(ids), key=lambda i: (i != query, i)):
        rec, live = await store.lookup(peer_id)
        if rec is not None:
            out.append(device_json(peer_id, rec, live, now))
        if len(out) >= MAX_RESULTS:
            break
    return out


async def change_device_id(store: Store, old_id: str, new_id: str) -> tuple[bool, str]:
    return await change_id(store.registry, store, old_id.strip(), new_id.strip())


async def summary(registry: Registry, sample: dict[str, Any] | None) -> dict[str, Any]:
    """Devices registered and online, and the rates of the latest sample.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    async with registry.guard("console_counts"):
        raw: Any = await registry.redis.get(console_key(registry, "counts"))
    counts = json_object(raw) or {}
    rd = (sample or {}).get("rd") or {}
    return {"registered": counts.get("registered"), "registered_complete":
            counts.get("complete", True), **rd, "relay": (sample or {}).get("relay") or {}}


async def relay_view(registry: Registry) -> dict[str, Any]:
    """Pairs per shard (with bandwidth) and both IP lists.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    replies, errors = await gather_usage(registry)
    lists = await relay_store.fetch(registry)
    return {"shards": replies, "errors": errors, "blacklist": sorted(lists.blacklist),
            "blocklist": sorted(lists.blocklist)}


async def edit_list(registry: Registry, name: str, add: list[str],
                    remove: list[str]) -> list[str]:
    """Add and remove addresses on one relay list; every shard applies it at once.

    Raises:
        ValueError: unknown list, an entry that is not an IP address, or the list is full.
        RegistryUnavailable: Redis did not answer.
    """
    if name not in LIST_NAMES:
        raise ValueError(f"unknown list {name!r}")
    try:
        add_n = [normalise_ip(a) for a in add]
        remove_n = [normalise_ip(r) for r in remove]
    except ValueError:
        raise ValueError("entries must be IP addresses") from None
    entries = await relay_store.modify(registry, name, add=add_n, remove=remove_n)
    return sorted(entries)
