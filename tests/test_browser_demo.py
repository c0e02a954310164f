"""Two headless Chromium pages on hubbub's /demo hear each other and see each other move.

The pages run mediasoup-client and the Wired 0.3.0 messages against a real gateway (spaces
signalling) and a real shard (the SFU), all on loopback. ``HUBBUB_TEST_MSC_BUNDLE=<file>`` swaps
in another mediasoup-client bundle (an IIFE exposing ``mediasoupClient``) to check older clients.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import Cluster, HubbubProcess, free_port, free_port_block, shard_env


pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def media_env() -> dict[str, str]:
    return shard_env(2, SPACES_PORT=str(free_port()),
                     RENDEZVOUS_PORT=str(free_port_block(4) + 1),
                     MEDIASOUP_LISTEN_IP="127.0.0.1", MEDIASOUP_ANNOUNCED_IP="127.0.0.1")


@pytest.fixture
def hubbub_cluster(cluster: Cluster) -> Iterator[tuple[HubbubProcess, int]]:
    env = media_env()
    gateway = cluster.start("gateway", env=env)
    cluster.start("shard", env=env)
    yield gateway, int(env["SPACES_PORT"])


def wait(page: Any, expr: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(expr)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {expr}: {value!r}\n"
                         + page.evaluate("document.getElementById('log').textContent"))


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_two_pages_hear_and_see_each_other(hubbub_cluster: tuple[HubbubProcess, int],
                                           proto: str) -> None:
    """Over UDP, and over ICE-TCP only (the page drops the UDP candidate with ``?tcp=1``)."""
    from playwright.sync_api import sync_playwright

    _, port = hubbub_cluster
    base = (f"http://127.0.0.1:{port}/demo?autojoin=1&space=https://example.org/browser.glb"
            + ("&tcp=1" if proto == "tcp" else ""))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            a = browser.new_context().new_page()
            b = browser.new_context().new_page()
            bundle = os.environ.get("HUBBUB_TEST_MSC_BUNDLE")
            if bundle:  # another mediasoup-client build, e.g. the Wired era's 3.6.x
                for page in (a, b):
                    page.route("**/web/mediasoup-client.js", lambda route: route.fulfill(
                        path=bundle, content_type="application/javascript"))
            a.goto(base + "&name=ann")
            wait(a, "demo.dataProducer && demo.producer && demo.playerId !== null")
            b.goto(base + "&name=bob")
            a_id = a.evaluate("demo.playerId")
            wait(b, "demo.consumers.size >= 1 && demo.dataConsumers.size >= 1")
            # Voice: B decodes A's fake microphone.
            stats = wait(b, "(async () => { const s = await demo.audioStats();"
                            " return s.packetsReceived > 100 && s.totalAudioEnergy > 0 && s; })()")
            assert stats["packetsReceived"] > 100 and stats["totalAudioEnergy"] > 0
            assert b.evaluate("demo.iceProtocol()") == proto
            # A's microphone stream gets the shard's receiver reports (RTT needs LSR/DLSR).
            rr = wait(a, "(async () => { const s = await demo.sendStats();"
                         " return s.reports > 0 && s; })()")
            assert rr["fractionLost"] == 0 and rr["roundTripTime"] is not None
            # ... and B's copy gets the shard's sender reports.
            wait(b, "(async () => (await demo.audioStats()).remotePacketsSent > 0)()")
            # Location: A moves; B receives A's 21-byte records with A's player id.
            a.mouse.move(300, 200)
            wait(b, f"demo.positions.has({a_id}) && demo.recordsReceived > 10")
            pos = b.evaluate(f"demo.positions.get({a_id})")
            assert pos["q"] == [0, 0, 0, 1]
            # A hears B as well, and the players list shows both.
            wait(a, "demo.consumers.size >= 1")
            assert b.evaluate("demo.errors") == [] and a.evaluate("demo.errors") == []
            assert b.evaluate("demo.players.size") == 2
            # A leaves: B drops A from the list and stops playing A's track.
            a.click("#leave")
            wait(b, "demo.players.size === 1 && demo.consumers.size === 0"
                    " && !document.querySelector('audio')")
        finally:
            browser.close()
