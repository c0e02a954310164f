"""Load-test helpers that need no cluster: targets, durations, thresholds, commands."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loadtest.runner import SCENARIOS, _parser, locust_command, parse_duration
from loadtest.targets import NullRecorder, Target, measure


def test_relay_addr_follows_the_client_rules() -> None:
    t = Target(host="127.0.0.1", rendezvous_port=30001, relay_port=30002)
    assert t.relay_addr("") == ("127.0.0.1", 30002)
    assert t.relay_addr("relay.example") == ("relay.example", 30002)
    assert t.relay_addr("10.0.0.1:21117") == ("10.0.0.1", 21117)
    assert t.relay_addr("[::1]:4444") == ("::1", 4444)
    assert t.relay_addr("[::1]") == ("::1", 30002)
    assert t.relay_addr("host:notaport") == ("host:notaport", 30002)
    assert t.nat_port == 30000
    assert Target(host="::1", spaces_port=4001).spaces_url == "ws://[::1]:4001/"


def test_measure_reports_success_and_failure() -> None:
    rec = NullRecorder()
    with measure(rec, "t", "ok") as m:
        m.length = 5
    with pytest.raises(ValueError), measure(rec, "t", "bad"):
        raise ValueError("no")
    assert [(c[1], c[3], type(c[4]).__name__) for c in rec.calls] == [
        ("ok", 5, "NoneType"), ("bad", 0, "ValueError")]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("30s", 30.0), ("2m", 120.0), ("1h30m", 5400.0), ("1m5s", 65.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "1m 5s", "-3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


class _Total:
    def __init__(self, n: int, fail_ratio: float, p95: float, avg: float) -> None:
        self.num_requests = n
        self.fail_ratio = fail_ratio
        self.avg_response_time = avg
        self._p95 = p95

    def get_response_time_percentile(self, q: float) -> float:
        return self._p95


def test_thresholds() -> None:
    from loadtest.thresholds import check_thresholds

    opts = SimpleNamespace(max_fail_ratio=0.01, max_p95_ms=100.0, max_avg_ms=0.0,
                           min_requests=10)
    assert check_thresholds(SimpleNamespace(total=_Total(50, 0.0, 20, 5)), opts) == []
    problems = check_thresholds(SimpleNamespace(total=_Total(5, 0.5, 500, 400)), opts)
    assert len(problems) == 3
    assert any("fail ratio" in p for p in problems)
    assert any("p95" in p for p in problems)
    assert any("5 requests < 10" in p for p in problems)


def test_locust_command_forwards_knobs_and_classes() -> None:
    args = _parser().parse_args(["rustdesk", "-u", "7", "-t", "5s", "--relay-ratio", "0.5",
                                 "--processes", "2"])
    cmd = locust_command(Target(rendezvous_port=1234), SCENARIOS["rustdesk"], args)
    assert cmd[-4:] == ["DeviceUser", "WebDeviceUser", "ControllerUser", "WebControllerUser"]
    assert "--ramp-step" not in cmd and "-u" in cmd
    ramp = locust_command(Target(), ["PlayerUser"], _parser().parse_args(["spaces", "--ramp"]))
    assert "-u" not in ramp and ramp[ramp.index("-f") + 1].endswith("locustfile_ramp.py")
    assert "--headless" in cmd and "--processes" in cmd
    i = cmd.index("--relay-ratio")
    assert cmd[i + 1] == "0.5"
    assert cmd[cmd.index("--rendezvous-port") + 1] == "1234"
    assert "--heartbeat" not in cmd  # unset knobs keep the users' defaults
    web = locust_command(Target(), ["PlayerUser"], _parser().parse_args(["spaces", "--web"]))
    assert "--headless" not in web and "--autostart" in web
    assert web[web.index("--web-host") + 1] == "127.0.0.1"


def test_tooling_modules_do_not_import_locust() -> None:
    """locust monkey-patches the standard library on import: only locust processes may load it."""
    import subprocess
    import sys

    code = ("import sys, loadtest.bench, loadtest.runner, loadtest.cluster, loadtest.thresholds;"
            "bad = [m for m in ('locust', 'gevent') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
