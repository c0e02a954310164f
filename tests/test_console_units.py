"""Sans-I/O parts of the console: the metrics summary."""

from __future__ import annotations

from pathlib import Path

from support import io_imports

from gateway.console import rates


GATEWAY = """
# TYPE hubbub_rendezvous_registrations counter
hubbub_rendezvous_registrations_total{transport="udp",result="OK"} 10.0
hubbub_rendezvous_registrations_total{transport="tcp",result="OK"} 2.0
hubbub_rendezvous_registrations_total{transport="udp",result="UUID_MISMATCH"} 1.0
# TYPE hubbub_rendezvous_heartbeats counter
hubbub_rendezvous_heartbeats_total 100.0
# TYPE hubbub_rendezvous_online_peers gauge
hubbub_rendezvous_online_peers 7.0
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 3.0
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5e+07
"""

SHARD = """
# TYPE hubbub_relay_bytes counter
hubbub_relay_bytes_total 1000.0
# TYPE hubbub_relay_pairs gauge
hubbub_relay_pairs 3.0
# TYPE hubbub_media_rtp_received counter
hubbub_media_rtp_received_total 1000.0
# TYPE hubbub_media_rtp_dropped counter
hubbub_media_rtp_dropped_total{reason="srtp"} 10.0
"""


def _bump(scrape: rates.Scrape, **by: float) -> rates.Scrape:
    out = dict(scrape)
    for k, v in by.items():
        out[k] = out.get(k, 0.0) + v
    return out


def test_parse_keeps_only_the_console_series_and_their_breakdown() -> None:
    got = rates.parse(GATEWAY)
    assert got["hubbub_rendezvous_registrations_total"] == 13.0
    assert got["hubbub_rendezvous_registrations_total|OK"] == 12.0
    assert got["hubbub_rendezvous_registrations_total|UUID_MISMATCH"] == 1.0
    assert got["process_resident_memory_bytes"] == 5e7
    assert rates.parse("not prometheus {{{") == {}


def test_summary_rates_over_processes_and_restarts() -> None:
    gw0, sh0 = rates.parse(GATEWAY), rates.parse(SHARD)
    gw1 = _bump(gw0, hubbub_rendezvous_heartbeats_total=50, process_cpu_seconds_total=1.0,
                **{"hubbub_rendezvous_registrations_total": 4,
                   "hubbub_rendezvous_registrations_total|OK": 4})
    sh1 = _bump(sh0, hubbub_relay_bytes_total=2000, hubbub_media_rtp_received_total=100,
                hubbub_media_rtp_dropped_total=5)
    s = rates.summarise(100.0, 2.0, {"g": gw0, "s": sh0}, {"g": gw1, "s": sh1},
                        {"g": "gateway", "s": "shard"})
    assert s["rd"]["hb_s"] == 25.0 and s["rd"]["reg_s"] == 2.0 and s["rd"]["online"] == 7
    assert s["rd"]["results"] == {"OK": 2.0, "UUID_MISMATCH": 0.0}
    assert s["rd"]["results_total"] == {"OK": 16, "UUID_MISMATCH": 1}
    assert s["relay"]["bps"] == 8000 and s["relay"]["shards"]["s"] == {"pairs": 3, "bps": 8000}
    assert s["media"]["loss"] == 5.0
    assert s["procs"]["g"] == {"cpu": 50.0, "rss": 50_000_000}
    # A restarted process (counters back near zero) and a new one give no negative rates.
    s = rates.summarise(101.0, 1.0, {"g": gw1}, {"g": rates.parse(GATEWAY), "new": gw0},
                        {"g": "gateway", "new": "gateway"})
    assert s["rd"]["hb_s"] == 0.0 and s["rd"]["reg_s"] == 0.0
    point = rates.history_point(s)
    assert set(point) >= {"t", "online", "reg_s", "hb_s", "punch_s", "relay_bps", "players"}
    burst = rates.average([dict(point, hb_s=0.0), dict(point, hb_s=50.0, t=105.0)])
    assert burst["hb_s"] == 25.0 and burst["t"] == 105.0


def test_rates_module_is_sans_io() -> None:
    assert io_imports(Path(rates.__file__)) == set()


def test_readme_api_table_is_current() -> None:
    from support import ROOT

    from gateway.console.api import api_markdown

    assert api_markdown() in (ROOT / "README.md").read_text(), "regenerate the console API table"
