"""A shard's memory under abusive mixed pairs: bounded while they run, given back after.

One shard process (so every pair lands on it); from one source address, pairs whose writer
starts a message and never finishes it while the reader reads nothing (``ABUSE_KINDS``: a
16 MiB TCP frame for a WebSocket side, a 16 MiB WebSocket frame for a TCP side, a fragmented
message held just under the assembly cap, an endless fragmented message between two WebSocket
sides). Resident memory of the shard is read from ``/proc`` during and after each round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from relay_support import KEY, Relay, closed_within, new_uuid, running_relay
from support import RedisServer, assert_memory_bounded

from loadtest.bench_relay import ABUSE_KINDS, AbusePair, abuse, recv_exact
from loadtest.cluster import rss_bytes


MiB = 1024 * 1024
PAIRS_PER_KIND = 12
ROUNDS = 3
DURING_BOUND = 48 * MiB
"""Growth allowed while 48 abusive pairs run: each holds one write queue (about 0.5 MiB) or one
fragmented message under the 1 MiB assembly cap (measured: about 24 MiB in all)."""
AFTER_MARGIN = 8 * MiB
"""Growth allowed once the pairs closed, over the shard's RSS before the first round."""


@pytest.fixture(scope="module")
def relay(redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with running_relay(redis_srv.url, tmp_path_factory.mktemp("relay"), shards=1,
                       RELAY_TIMEOUT="30") as relay:
        yield relay


def _rss(relay: Relay) -> int:
    return rss_bytes(relay.shards[0].proc.pid)


def _no_pairs(relay: Relay, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while relay.metric("hubbub_relay_pairs") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def _settle(relay: Relay) -> None:
    """Wait until the shard's pairs are gone, then for one sweep (it gives memory back)."""
    _no_pairs(relay)
    time.sleep(1.1)


def test_abusive_mixed_pairs_stay_bounded_and_memory_comes_back(relay: Relay) -> None:
    _warm_up(relay)
    start = _rss(relay)
    peaks: list[int] = []
    afters: list[int] = []
    for _ in range(ROUNDS):
        peak = [start]

        def sample(peak: list[int] = peak) -> None:
            peak[0] = max(peak[0], _rss(relay))

        pairs = abuse(relay.port, PAIRS_PER_KIND, 1.5, KEY, ("127.0.0.5", 0), sample)
        assert relay.metric("hubbub_relay_pairs") >= len(pairs) - PAIRS_PER_KIND
        assert all(p.alive for p in pairs if p.limit < 1 << 62), "a held fragment was refused"
        sample()
        for p in pairs:
            p.close()
        _settle(relay)
        peaks.append(peak[0] - start)
        afters.append(_rss(relay) - start)
    assert_memory_bounded(start, peaks, afters, DURING_BOUND, AFTER_MARGIN)
    assert relay.metric("hubbub_relay_held_bytes") == 0


def _warm_up(relay: Relay) -> None:
    """One ordinary mixed pair, so that start-up allocations are not counted as growth."""
    uuid = new_uuid("warm")
    w = relay.ws(uuid)
    t = relay.connect(uuid)
    w.send(b"x" * 100_000)
    assert len(recv_exact(t, 100_003)) == 100_003
    relay.close_all()
    _settle(relay)


def test_fragmented_message_above_the_cap_closes_the_pair(relay: Relay) -> None:
    before = relay.metric('hubbub_relay_closed_total{reason="too_large"}')
    uuid = new_uuid("frag")
    t = relay.connect(uuid)
    w = relay.ws(uuid)
    w.sock.sendall(w.frame(b"\0" * 65536, 2, fin=False))
    for _ in range(17):
        try:
            w.sock.sendall(w.frame(b"\0" * 65536, 0, fin=False))
        except OSError:
            break
    assert closed_within(t, 3)
    assert relay.metric('hubbub_relay_closed_total{reason="too_large"}') == before + 1


@pytest.mark.parametrize("kind", ABUSE_KINDS)
def test_each_abuse_kind_holds_little_and_keeps_the_pair_open(relay: Relay, kind: str) -> None:
    """Whatever the writer pushes (the kernel buffers on loopback take several MiB), the relay
    holds one write queue or one capped fragment, never the 16 MiB message, and the pair
    stays up: the writer is paused, not cut off."""
    _no_pairs(relay)
    start = _rss(relay)
    pair = AbusePair(relay.port, kind, KEY, ("127.0.0.6", 0))
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # push for a sweep or more (it publishes held bytes)
            if not pair.push():
                time.sleep(0.01)
        assert 0 < relay.metric("hubbub_relay_held_bytes") <= 1 * MiB
        assert _rss(relay) - start <= 8 * MiB
        assert pair.alive and relay.metric("hubbub_relay_pairs") == 1
    finally:
        pair.close()
