"""Headline figures from the processes' Prometheus text: totals now, rates between two scrapes.

Sans-I/O: ``parse`` turns one ``/metrics`` body into the few series the console shows;
``summarise`` turns the previous and current scrapes of every process into one cluster-wide
sample (a plain JSON-able dict) and ``history_point`` shrinks it for the fixed-size history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


__all__ = ["Scrape", "average", "history_point", "parse", "summarise"]

# Series the console reads: name -> label whose values are kept apart (None: summed).
SERIES: dict[str, str | None] = {
    "hubbub_rendezvous_registrations_total": "result",
    "hubbub_rendezvous_heartbeats_total": None,
    "hubbub_rendezvous_punch_requests_total": "outcome",
    "hubbub_rendezvous_online_peers": None,
    "hubbub_relay_bytes_total": None,
    "hubbub_relay_pairs": None,
    "hubbub_relay_refused_total": "reason",
    "hubbub_spaces_players": None,
    "hubbub_spaces_sockets": None,
    "hubbub_media_sessions": None,
    "hubbub_media_transports": None,
    "hubbub_media_rtp_received_total": None,
    "hubbub_media_rtp_forwarded_total": None,
    "hubbub_media_rtp_dropped_total": None,
    "hubbub_media_datachannel_forwarded_total": None,
    "process_cpu_seconds_total": None,
    "process_resident_memory_bytes": None,
}

Scrape = dict[str, float]
"""``name`` -> total, and ``name|label value`` -> that part of it."""


def parse(text: str) -> Scrape:
    """The ``SERIES`` of one ``/metrics`` body (malformed text gives what parsed before it)."""
    out: Scrape = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in SERIES:
                    continue
                value = float(sample.value)
                out[sample.name] = out.get(sample.name, 0.0) + value
                label = SERIES[sample.name]
                if label is not None and label in sample.labels:
                    key = f"{sample.name}|{sample.labels[label]}"
                    out[key] = out.get(key, 0.0) + value
    except ValueError:
        pass
    return out


def _rate(prev: Scrape | None, cur: Scrape, name: str, dt: float) -> float:
    if prev is None or dt <= 0:
        return 0.0
    # A restarted process starts its counters from zero again: no negative rates.
    return max(0.0, cur.get(name, 0.0) - prev.get(name, 0.0)) / dt


def _breakdown(prev: Scrape | None, cur: Scrape, name: str, dt: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in cur:
        if key.startswith(name + "|"):
            out[key.split("|", 1)[1]] = _rate(prev, cur, key, dt)
    return out


def summarise(now: float, dt: float, prev: Mapping[str, Scrape],
              cur: Mapping[str, Scrape], roles: Mapping[str, str]) -> dict[str, Any]:
    """One cluster-wide sample from every process's previous and current scrape.

    Args:
        now: wall-clock time of the sample.
        dt: seconds between the two scrapes.
        prev: process id -> previous scrape (missing: no rates for it yet).
        cur: process id -> current scrape.
        roles: process id -> role.
    """
    def total(name: str) -> float:
        return sum(s.get(name, 0.0) for s in cur.values())

    def rate(name: str) -> float:
        return sum(_rate(prev.get(pid), s, name, dt) for pid, s in cur.items())

    def breakdown(name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, s in cur.items():
            for k, v in _breakdown(prev.get(pid), s, name, dt).items():
                out[k] = out.get(k, 0.0) + v
        return {k: round(v, 2) for k, v in sorted(out.items())}

    def totals(name: str) -> dict[str, int]:
        out: dict[str, float] = {}
        for s in cur.values():
            for key, value in s.items():
                if key.startswith(name + "|"):
                    part = key.split("|", 1)[1]
                    out[part] = out.get(part, 0.0) + value
        return {k: int(v) for k, v in sorted(out.items())}

    procs: dict[str, dict[str, Any]] = {}
    shards: dict[str, dict[str, Any]] = {}
    for pid, s in cur.items():
        procs[pid] = {
            "cpu": round(100 * _rate(prev.get(pid), s, "process_cpu_seconds_total", dt), 1),
            "rss": int(s.get("process_resident_memory_bytes", 0)),
        }
        if roles.get(pid) == "shard":
            shards[pid] = {
                "pairs": int(s.get("hubbub_relay_pairs", 0)),
                # Every byte a relay receives it sends on: in and out are the same rate.
                "bps": round(8 * _rate(prev.get(pid), s, "hubbub_relay_bytes_total", dt)),
            }
    received = rate("hubbub_media_rtp_received_total")
    dropped = rate("hubbub_media_rtp_dropped_total")
    return {
        "t": round(now, 3),
        "rd": {
            "online": int(total("hubbub_rendezvous_online_peers")),
            "reg_s": round(rate("hubbub_rendezvous_registrations_total"), 2),
            "hb_s": round(rate("hubbub_rendezvous_heartbeats_total"), 2),
            "punch_s": round(rate("hubbub_rendezvous_punch_requests_total"), 2),
            "results": breakdown("hubbub_rendezvous_registrations_total"),
            "outcomes": breakdown("hubbub_rendezvous_punch_requests_total"),
            "results_total": totals("hubbub_rendezvous_registrations_total"),
            "outcomes_total": totals("hubbub_rendezvous_punch_requests_total"),
        },
        "relay": {
            "pairs": int(total("hubbub_relay_pairs")),
            "bps": round(8 * rate("hubbub_relay_bytes_total")),
            "refused_s": round(rate("hubbub_relay_refused_total"), 2),
            "shards": shards,
        },
        "spaces": {
            "players": int(total("hubbub_spaces_players")),
            "sockets": int(total("hubbub_spaces_sockets")),
        },
        "media": {
            "sessions": int(total("hubbub_media_sessions")),
            "transports": int(total("hubbub_media_transports")),
            "rtp_in_s": round(received, 1),
            "fwd_s": round(rate("hubbub_media_rtp_forwarded_total"), 1),
            "dc_fwd_s": round(rate("hubbub_media_datachannel_forwarded_total"), 1),
            "loss": round(100 * dropped / received, 2) if received else 0.0,
        },
        "procs": procs,
    }


def history_point(sample: Mapping[str, Any]) -> dict[str, float]:
    """The headline rates of a sample, as one point of the history charts."""
    rd, relay, media = sample["rd"], sample["relay"], sample["media"]
    return {"t": sample["t"], "online": rd["online"], "reg_s": rd["reg_s"], "hb_s": rd["hb_s"],
            "punch_s": rd["punch_s"], "relay_bps": relay["bps"], "pairs": relay["pairs"],
            "players": sample["spaces"]["players"], "fwd_s": media["fwd_s"],
            "loss": media["loss"]}


def average(points: list[dict[str, float]]) -> dict[str, float]:
    """One history point for a window of per-second points: their means, stamped with the last
    one's time (so a burst between two history points still shows)."""
    out = {k: round(sum(p[k] for p in points) / len(points), 2) for k in points[-1] if k != "t"}
    out["t"] = points[-1]["t"]
    return out
