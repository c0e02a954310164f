"""Fast counters expose exactly what prometheus_client Counters expose."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from hubbub.metrics import FastCounter, FastCounterFamily


def generate_openmetrics(registry: CollectorRegistry) -> bytes:
    text: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    return text


def _scrub(text: bytes) -> str:
    """The exposition with creation timestamps blanked, as they differ by construction."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text.decode())


def test_unlabelled_exposition_matches_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounter("hubbub_test_events", "events seen", registry=ours)
    slow = Counter("hubbub_test_events", "events seen", registry=theirs)
    for text in (generate_latest(ours), generate_openmetrics(ours)):
        assert b"hubbub_test_events_total 0.0" in text
    fast.inc()
    fast.value += 2
    fast.inc(0.5)
    slow.inc(3.5)
    assert _scrub(generate_latest(ours)) == _scrub(generate_latest(theirs))
    assert _scrub(generate_openmetrics(ours)) == _scrub(generate_openmetrics(theirs))
    assert "hubbub_test_events_total 3.5" in generate_latest(ours).decode()


def test_labelled_exposition_matches_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounterFamily("hubbub_test_drops_total", "drops", ["reason", "kind"],
                             registry=ours)
    slow = Counter("hubbub_test_drops_total", "drops", ["reason", "kind"], registry=theirs)
    assert generate_latest(ours) == generate_latest(theirs)  # no children yet
    for values, n in ((("full", "udp"), 3), (("error", 7), 1), (("full", "udp"), 2)):
        child = fast.labels(*values)
        for _ in range(n):
            child.value += 1
        slow.labels(*values).inc(n)
    assert fast.labels("error", "7") is fast.labels("error", 7)
    assert _scrub(generate_latest(ours)) == _scrub(generate_latest(theirs))
    assert _scrub(generate_openmetrics(ours)) == _scrub(generate_openmetrics(theirs))
    assert 'hubbub_test_drops_total{kind="udp",reason="full"} 5.0' in (
        generate_latest(ours).decode())


def test_default_registry_and_name_clashes() -> None:
    family = FastCounterFamily("hubbub_test_fast_default", "default registry", ["op"])
    family.labels("x").inc(4)
    counter = FastCounter("hubbub_test_fast_plain", "default registry")
    counter.inc()
    text = generate_latest().decode()
    assert 'hubbub_test_fast_default_total{op="x"} 4.0' in text
    assert "# TYPE hubbub_test_fast_plain_total counter" in text
    assert "hubbub_test_fast_plain_total 1.0" in text
    with pytest.raises(ValueError):  # one name, one series, as with Counter
        Counter("hubbub_test_fast_plain", "clash")
    with pytest.raises(ValueError):
        family.labels("x", "y")
