"""Churn soak of the SFU (``-m slow``): rounds of players joining, talking and leaving leave
nothing behind (routes, transports, sessions, tasks) and memory stays flat."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest
from aiortc.rtcdtlstransport import RTCCertificate

from hubbub.contracts.media import MediaCall
from loadtest.media_peer import MediaPeer, local_router, opus_rtp_parameters, wait_for
from shards.media.router import MediaRouter


pytestmark = pytest.mark.slow

CAPS = {"codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
                    "clockRate": 48000, "channels": 2}], "headerExtensions": []}
ROUNDS = 12
PLAYERS = 6


async def _round(router: MediaRouter, cert: RTCCertificate, n: int) -> None:
    peers: list[MediaPeer] = []
    subs: list[MediaPeer] = []
    sessions = [f"r{n}/{i}" for i in range(PLAYERS)]

    def call(sid: str, op: str, data: object = None) -> list[list[object]]:
        return router.call(MediaCall(sid, "gw", op, data,
                                     {f"space-{n % 3}": sessions.index(sid)}))

    for i, sid in enumerate(sessions):
        for kind in ("producer", "consumer"):
            [[_, created]] = call(sid, "create_transport", {"type": kind})
            peer = MediaPeer(created["options"], cert)  # type: ignore[index]
            peer.count_only = True
            call(sid, "connect_transport", {"type": kind,
                                            "dtlsParameters": peer.dtls_parameters()})
            await peer.connect()
            peers.append(peer)
            if kind == "consumer":
                subs.append(peer)
        call(sid, "set_rtp_capabilities", CAPS)
        call(sid, "produce", opus_rtp_parameters(100 + i))
        call(sid, "produce_data", {"streamId": 0, "ordered": False, "maxRetransmits": 0})
        call(sid, "resume_audio")
    router.take_pushes()
    for sid in sessions:  # consumers created after a player's resume_audio get resumed too
        call(sid, "resume_audio")
    senders = peers[0::2]
    channels = [p.data_channel(0) for p in senders]
    for k in range(50):
        for i, p in enumerate(senders):
            p.send_rtp(100 + i, 111, k, k * 960, b"\x07" * 60)
            if k % 5 == 0:
                channels[i].send(bytes(21))
        await asyncio.sleep(0.005)
    expected = 50 * (PLAYERS - 1)
    assert await wait_for(lambda: all(s.rtp_received >= expected * 0.9 for s in subs), 5)
    for i, sid in enumerate(sessions):
        if i % 2:
            call(sid, "leave", {"uri": f"space-{n % 3}"})
        call(sid, "close")
    await asyncio.gather(*(p.close() for p in peers))


async def test_churn_leaves_nothing_behind() -> None:
    router = await local_router()
    counts, mux = router.counts, router.mux
    cert = RTCCertificate.generateCertificate()
    tracemalloc.start()
    try:
        sizes = []
        for n in range(ROUNDS):
            await _round(router, cert, n)
            await asyncio.sleep(0.2)
            assert not router.sessions and not router.spaces and not router.transports
            assert not mux.by_ufrag and not mux.by_addr
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert len(tasks) < 10, tasks
        # After warm-up, memory does not grow with the number of rounds.
        assert sizes[-1] < sizes[3] * 1.5 + 2_000_000, sizes
        assert counts.rtp_out >= ROUNDS * PLAYERS * 50 * (PLAYERS - 1) * 0.9
    finally:
        tracemalloc.stop()
        assert mux.sock is not None
        mux.sock.close()
