"""Pure rendezvous decisions: ID formats, online bitmaps, LAN and relay choices."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


__all__ = [
    "PunchPlan",
    "RelayChoice",
    "choose_relay_host",
    "online_bitmap",
    "parse_mask",
    "plan_punch",
    "split_host_port",
    "valid_custom_id",
    "valid_register_id",
]

# ``\w`` is Unicode-aware, as in the client's own rule (Rust regex): "Büro-PC1" is a valid
# changed ID there, so it must be registrable here too.
_REGISTER_ID = re.compile(r"[^\W_][\w.@-]{0,63}")
_CUSTOM_ID = re.compile(r"[a-zA-Z][\w-]{5,15}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def valid_register_id(peer_id: str) -> bool:
    """IDs a device may register: auto numeric IDs, custom IDs and host-name IDs."""
    return _REGISTER_ID.fullmatch(peer_id) is not None


def valid_custom_id(peer_id: str) -> bool:
    """The client's rule for a changed ID: a letter, then 5–15 word characters or dashes."""
    return _CUSTOM_ID.fullmatch(peer_id) is not None


def online_bitmap(flags: Sequence[bool]) -> bytes:
    """MSB-first bitmap, always ``ceil(len/8)`` bytes (clients index it without a check)."""
    out = bytearray((len(flags) + 7) // 8)
    for i, on in enumerate(flags):
        if on:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def parse_mask(mask: str) -> Network | None:
    """The LAN network of ``--mask``; None when unset or invalid."""
    if not mask:
        return None
    try:
        return ipaddress.ip_network(mask, strict=False)
    except ValueError:
        return None


def is_lan(ip: str, network: Network | None) -> bool:
    if network is None:
        return False
    try:
        return ipaddress.ip_address(ip) in network
    except ValueError:
        return False


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


@dataclass(frozen=True)
class PunchPlan:
    """What to push to B for one PunchHoleRequest."""

    fetch_local: bool  # FetchLocalAddr instead of PunchHole
    force_symmetric: bool  # make B relay
    relay_server: str


def plan_punch(a_ip: str, b_ip: str, *, websocket: bool, always_relay: bool,
               network: Network | None, local_ip: str, relay_server: str) -> PunchPlan:
    """hbbs's LAN and forced-relay decision (both sides are canonical IP text).

    ALWAYS_USE_RELAY also applies to peers behind one public IP, unlike hbbs: a request to
    always relay must not be bypassed by the LAN shortcut.
    """
    a_lan = is_lan(a_ip, network)
    b_lan = is_lan(b_ip, network)
    force = always_relay or (a_lan != b_lan)
    relay = relay_server
    if force and b_lan and local_ip:
        relay = local_ip  # B reaches the relay on its LAN address (hbbs does the same)
    same_intranet = (not websocket and not always_relay
                     and ((a_lan and b_lan) or (a_ip == b_ip and _family(a_ip) == _family(b_ip))))
    return PunchPlan(same_intranet, force and not same_intranet, relay)


def split_host_port(server: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` / ``[v6]:port`` / bare IPv6 -> ``(host, port)``."""
    text = server.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    return host, int(port) if port.isdigit() else default_port


def choose_relay_host(shards: Iterable[dict[str, Any]], default_port: int = 21117) -> str:
    """Least-loaded relay host from shard presence records, as ``ip[:port]``; "" if none.

    Load per host is the sum over its shards of relay pairs (then bytes/s to break ties).
    """
    hosts: dict[str, list[float]] = {}
    addr: dict[str, str] = {}
    for info in shards:
        ports = info.get("ports") or {}
        relay = ports.get("relay") if isinstance(ports, dict) else None
        if not relay or info.get("state", "up") != "up":
            continue
        host = str(info.get("host", ""))
        ip = str(info.get("public_ip") or "")
        if not ip:
            continue
        load = info.get("load") or {}
        pairs = float(load.get("relay_pairs", 0) or 0) if isinstance(load, dict) else 0.0
        bps = float(load.get("relay_bps", 0) or 0) if isinstance(load, dict) else 0.0
        acc = hosts.setdefault(host, [0.0, 0.0])
        acc[0] += pairs
        acc[1] += bps
        text = f"[{ip}]" if ":" in ip else ip
        addr[host] = text if int(relay) == default_port else f"{text}:{int(relay)}"
    if not hosts:
        return ""
    best = min(hosts, key=lambda h: (hosts[h][0], hosts[h][1], h))
    return addr[best]


class RelayChoice:
    """Which relay a punch names, and whether relaying is forced (hbbs ``-r`` and
    ``ALWAYS_USE_RELAY``, overridable at run time by ``hubbub admin``).

    Configured relays are served round robin, skipping those found unreachable; without any,
    the least-loaded relay host of the cluster (``auto``).
    """

    def __init__(self, servers: Sequence[str] = (), always_relay: bool = False) -> None:
        self.config_servers = tuple(servers)
        self.config_always = always_relay
        self.servers = self.config_servers
        self.always_relay = always_relay
        self.down: set[str] = set()
        self.auto = ""
        self._rr = 0

    def pick(self) -> str:
        servers = [s for s in self.servers if s not in self.down] or list(self.servers)
        if servers:
            self._rr = (self._rr + 1) % len(servers)
            return servers[self._rr]
        return self.auto

    def apply(self, settings: dict[str, str]) -> None:
        """The run-time settings ``hubbub admin`` stored; a missing one means the config's."""
        if "relay_servers" in settings:
            self.servers = tuple(s.strip() for s in settings["relay_servers"].split(",")
                                 if s.strip())
        else:
            self.servers = self.config_servers
        if "always_use_relay" in settings:
            self.always_relay = settings["always_use_relay"] == "Y"
        else:
            self.always_relay = self.config_always
