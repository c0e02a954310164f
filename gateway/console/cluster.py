"""The cluster view: hosts, their processes with load, and what needs an operator's attention.

Reads presence from the registry (as ``hubbub status`` does) and the sampler's latest sample
(CPU and memory per process). Alerts: processes draining, processes that vanished without
draining, processes over ``OVERLOAD_CPU`` % of their core, a stale sampler, and, when Redis
does not answer, the control plane itself.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.console.keys import console_key, json_object
from hubbub.errors import RegistryError
from registry import ProcessRecord, Registry


__all__ = ["cluster_view", "latest_sample", "process_json"]

OVERLOAD_CPU = 90.0


async def latest_sample(registry: Registry) -> dict[str, Any] | None:
    """The sampler's newest sample, or None when no sampler has written one lately.

    Raises:
        RegistryUnavailable: Redis did not answer.
    """
    async with registry.guard("console_live"):
        raw: Any = await registry.redis.get(console_key(registry, "live"))
    return json_object(raw)


def process_json(rec: ProcessRecord, stats: dict[str, Any] | None) -> dict[str, Any]:
    info = rec.info
    ports = dict(info.get("ports") or {}) if isinstance(info.get("ports"), dict) else {}
    rtc = info.get("rtc_ports")
    if isinstance(rtc, list) and len(rtc) == 2:
        ports["rtc"] = f"{rtc[0]}-{rtc[1]}"
    ports["ops"] = info.get("ops_port", "?")
    load = info.get("load") if isinstance(info.get("load"), dict) else {}
    return {"id": rec.id, "role": rec.role, "host": rec.host, "pid": rec.pid,
            "name": info.get("name", ""), "slot": info.get("slot"), "state": rec.state,
            "age": round(rec.age), "ports": ports, "load": load,
            "cpu": (stats or {}).get("cpu"), "rss": (stats or {}).get("rss"),
            "public_ip": rec.public_ip}


async def cluster_view(registry: Registry) -> dict[str, Any]:
    """Hosts -> processes and the alerts; never raises (a Redis failure is an alert)."""
    now = time.time()
    try:
        records = await registry.processes()
        sample = await latest_sample(registry)
        async with registry.guard("console_seen"):
            seen_raw: dict[Any, Any] = await registry.redis.hgetall(
                console_key(registry, "seen"))
    except RegistryError as exc:
        return {"ok": False, "hosts": [], "processes": [], "alerts": [
            {"level": "critical", "text": f"control plane (Redis) unreachable: {exc}"}],
            "t": now}
    stats = (sample or {}).get("procs") or {}
    procs = [process_json(r, stats.get(r.id)) for r in records]
    alerts: list[dict[str, str]] = []
    for p in procs:
        if p["state"] == "draining":
            alerts.append({"level": "warning", "text": f"{p['role']} {p['name'] or p['id']} on "
                                                        f"{p['host']} is draining"})
        if p["cpu"] is not None and p["cpu"] >= OVERLOAD_CPU:
            alerts.append({"level": "warning", "text": f"{p['role']} {p['name'] or p['id']} on "
                                                        f"{p['host']} is overloaded "
                                                        f"({p['cpu']:.0f}% CPU)"})
    live = {r.id for r in records}
    missing = []
    for pid, blob in seen_raw.items():
        pid = pid.decode() if isinstance(pid, bytes) else str(pid)
        if pid in live:
            continue
        try:
            last = orjson.loads(blob)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(last, dict) or last.get("state") == "draining":
            continue  # stopped on purpose
        missing.append({"id": pid, **last})
        alerts.append({"level": "critical",
                       "text": f"{last.get('role')} {last.get('name') or pid} on "
                               f"{last.get('host')} is missing (last seen "
                               f"{now - float(last.get('seen', now)):.0f}s ago)"})
    if sample is None:
        alerts.append({"level": "info", "text": "no metrics sample yet (sampler starting)"})
    if not any(p["role"] == "shard" for p in procs):
        alerts.append({"level": "critical", "text": "no live shard: relays and media are down"})
    hosts: dict[str, list[dict[str, Any]]] = {}
    for p in procs:
        hosts.setdefault(p["host"], []).append(p)
    return {"ok": True, "t": now, "processes": procs, "missing": missing,
            "hosts": [{"host": h, "processes": ps} for h, ps in sorted(hosts.items())],
            "alerts": alerts, "sample_t": (sample or {}).get("t")}
