"""Media plane benchmark: forwarded Opus packets per shard core, set-ups per second, idle cost,
and data-channel (location record) fan-out.

The SFU (``MediaRouter`` on its UDP mux, uvloop, exactly the shard's code path) runs in a child
process pinned to one core; the load generator (``loadtest.media_peer`` peers: real ICE, DTLS,
SCTP and SRTP, opaque 80-byte Opus-sized payloads at 50 packets/s per publisher) runs in this
process on another core. N publishers × M subscribers share one space, so the shard forwards
N·M·50 packets/s. CPU figures are the child's own ``getrusage`` time over wall time.

    python -m loadtest.bench_media            # full table
    python -m loadtest.bench_media --quick    # CI-sized
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from hubbub.runtime import loop_runner
from loadtest.media_peer import MediaPeer, local_router, opus_rtp_parameters
from shards.media.stack import Certificate, new_certificate


__all__ = ["main", "markdown", "run"]

BAR = 30000
"""Forwarded packets per second per shard core the media plane must reach."""
CAPS = {"codecs": [{"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
                    "clockRate": 48000, "channels": 2}],
        "headerExtensions": [{"kind": "audio", "preferredId": 10,
                              "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level"}]}
PAYLOAD = bytes(80)


# ------------------------------------------------------------------- shard side
def _shard_main(conn: Connection, core: int | None) -> None:
    if core is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})
    with loop_runner() as runner:
        runner.run(_shard(conn))


async def _shard(conn: Connection) -> None:
    router = await local_router()
    counts = router.counts
    done = asyncio.Event()

    def on_command() -> None:
        while conn.poll():
            cmd, arg = conn.recv()
            if cmd == "call":
                try:
                    reply = router.call(arg)
                    router.take_pushes()  # no gateway here: other sockets' messages are moot
                    conn.send(("ok", reply))
                except Exception as exc:
                    conn.send(("error", str(exc)))
            elif cmd == "stats":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                conn.send(("ok", {"cpu": ru.ru_utime + ru.ru_stime, "rtp_out": counts.rtp_out,
                                  "rtp_in": counts.rtp_in, "dc_out": counts.dc_out,
                                  "dc_dropped": counts.dc_dropped, "time": time.monotonic()}))
            elif cmd == "stop":
                done.set()
                conn.send(("ok", None))

    async def reports() -> None:
        # The service's 1 s tick: consent timers and SR/RR for every transport.
        while True:
            await asyncio.sleep(1.0)
            now, mono = time.time(), time.monotonic()
            for t in list(router.transports.values()):
                t.check_consent(mono)
                t.send_reports(now)

    asyncio.get_running_loop().add_reader(conn.fileno(), on_command)
    task = asyncio.ensure_future(reports())
    await done.wait()
    task.cancel()


class Shard:
    """The child process running the SFU, and a thread-safe RPC to it."""

    def __init__(self, core: int | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_shard_main, args=(child, core), daemon=True)
        self.proc.start()
        self._lock = threading.Lock()

    def rpc(self, cmd: str, arg: Any = None) -> Any:
        with self._lock:
            self.conn.send((cmd, arg))
            if not self.conn.poll(30):
                raise TimeoutError(f"shard did not answer {cmd}")
            status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{cmd}: {value}")
        return value

    async def call(self, session: str, op: str, data: Any, spaces: dict[str, int]) -> Any:
        payload = {"session": session, "gateway": "bench", "op": op, "data": data,
                   "spaces": spaces}
        return await asyncio.get_running_loop().run_in_executor(None, self.rpc, "call", payload)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.rpc("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# ------------------------------------------------------------------- load side
async def _peer(shard: Shard, cert: Certificate, session: str, kind: str,
                spaces: dict[str, int]) -> MediaPeer:
    [[_, created]] = await shard.call(session, "create_transport", {"type": kind}, spaces)
    peer = MediaPeer(created["options"], cert)
    peer.count_only = True
    await shard.call(session, "connect_transport",
                     {"type": kind, "dtlsParameters": peer.dtls_parameters()}, spaces)
    await peer.connect()
    return peer


async def _setup(shard: Shard, cert: Certificate, pubs: int, subs: int,
                 space: str) -> tuple[list[MediaPeer], list[MediaPeer], float]:
    t0 = time.monotonic()
    publishers: list[MediaPeer] = []
    for i in range(pubs):
        spaces = {space: i % 256}
        peer = await _peer(shard, cert, f"{space}/p{i}", "producer", spaces)
        await shard.call(f"{space}/p{i}", "produce", opus_rtp_parameters(1000 + i), spaces)
        publishers.append(peer)
    sem = asyncio.Semaphore(16)

    async def subscriber(j: int) -> MediaPeer:
        async with sem:
            sid, spaces = f"{space}/s{j}", {space: (pubs + j) % 256}
            peer = await _peer(shard, cert, sid, "consumer", spaces)
            await shard.call(sid, "set_rtp_capabilities", CAPS, spaces)
            await shard.call(sid, "resume_audio", None, spaces)
            return peer

    subscribers = list(await asyncio.gather(*(subscriber(j) for j in range(subs))))
    return publishers, subscribers, time.monotonic() - t0


async def _pump(publishers: list[MediaPeer], seconds: float, seq0: int) -> int:
    """Send one packet per publisher every 20 ms for ``seconds``; returns packets sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    ticks = int(seconds * 50)
    for k in range(ticks):
        seq = seq0 + k
        for i, p in enumerate(publishers):
            p.send_rtp(1000 + i, 111, seq, seq * 960, PAYLOAD)
        delay = start + (k + 1) * 0.02 - loop.time()
        await asyncio.sleep(max(0.0, delay))
    return ticks * len(publishers)


def _delta(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, float]:
    wall = b["time"] - a["time"]
    return b["cpu"] - a["cpu"], b["rtp_out"] - a["rtp_out"], wall


async def _case(shard: Shard, cert: Certificate, pubs: int, subs: int, seconds: float,
                index: int) -> list[dict[str, Any]]:
    space = f"bench-{index}"
    publishers, subscribers, setup = await _setup(shard, cert, pubs, subs, space)
    peers = publishers + subscribers
    try:
        await asyncio.sleep(0.5)
        a = shard.rpc("stats")
        await asyncio.sleep(2.0)
        b = shard.rpc("stats")
        idle_cpu, _, idle_wall = _delta(a, b)
        await _pump(publishers, 1.0, 0)  # warm-up
        await asyncio.sleep(0.2)  # let the warm-up drain before counting
        for s in subscribers:
            s.rtp_received = 0
        a = shard.rpc("stats")
        sent = await _pump(publishers, seconds, 50)
        b = shard.rpc("stats")
        cpu, forwarded, wall = _delta(a, b)
        await asyncio.sleep(0.2)
        received = sum(s.rtp_received for s in subscribers)
        per_core = forwarded / cpu if cpu > 0 else float("inf")
        return [{
            "case": f"{pubs} pubs × {subs} subs",
            "forwarded_pps": round(forwarded / wall),
            "received_pps": round(received / wall),
            "loss_pct": round(100 * (1 - received / max(1, sent * subs)), 2),
            "shard_cpu_pct": round(100 * cpu / wall, 1),
            "fwd_per_core_s": round(per_core),
            "us_cpu_per_pkt": round(1e6 * cpu / max(1, forwarded), 2),
            "ratio": round(per_core / BAR, 2),
            "setups_per_s": round(len(peers) / setup, 1),
            "idle_us_per_peer_s": round(1e6 * idle_cpu / idle_wall / len(peers), 1),
        }]
    finally:
        for sid in [f"{space}/p{i}" for i in range(pubs)] + [f"{space}/s{j}" for j in range(subs)]:
            with contextlib.suppress(Exception):
                await shard.call(sid, "close", None, {})
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def _data_case(shard: Shard, cert: Certificate, players: int, seconds: float,
                     index: int) -> list[dict[str, Any]]:
    """Every player sends 21-byte location records at 15 Hz; every other player gets them."""
    space = f"dc-{index}"
    peers: list[MediaPeer] = []
    senders = []
    try:
        for i in range(players):
            sid, spaces = f"{space}/{i}", {space: i % 256}
            send = await _peer(shard, cert, sid, "producer", spaces)
            recv = await _peer(shard, cert, sid, "consumer", spaces)
            peers += [send, recv]
            await shard.call(sid, "set_rtp_capabilities", CAPS, spaces)
            await shard.call(sid, "produce_data",
                             {"streamId": 0, "ordered": False, "maxRetransmits": 0}, spaces)
            senders.append(send.data_channel(0))
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        record = bytes(21)
        a = shard.rpc("stats")
        start = loop.time()
        ticks = int(seconds * 15)
        for k in range(ticks):
            for ch in senders:
                ch.send(record)
            await asyncio.sleep(max(0.0, start + (k + 1) / 15 - loop.time()))
        await asyncio.sleep(0.3)
        b = shard.rpc("stats")
        cpu, wall = b["cpu"] - a["cpu"], b["time"] - a["time"]
        out = b["dc_out"] - a["dc_out"]
        expected = ticks * players * (players - 1)
        return [{
            "case": f"{players} players × 15 Hz location records (data channels)",
            "forwarded_msgs_s": round(out / wall),
            "loss_pct": round(100 * (1 - out / max(1, expected)), 2),
            "shard_cpu_pct": round(100 * cpu / wall, 1),
            "fwd_msgs_per_core_s": round(out / cpu) if cpu > 0 else 0,
            "us_cpu_per_msg": round(1e6 * cpu / max(1, out), 1),
        }]
    finally:
        for i in range(players):
            with contextlib.suppress(Exception):
                await shard.call(f"{space}/{i}", "close", None, {})
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def _bench(cases: list[tuple[int, int]], data_cases: list[int], seconds: float,
                 core: int | None) -> list[dict[str, Any]]:
    shard = Shard(core)
    try:
        await asyncio.get_running_loop().run_in_executor(None, shard.rpc, "stats")
        cert = new_certificate()
        rows: list[dict[str, Any]] = []
        for i, (pubs, subs) in enumerate(cases):
            rows += await _case(shard, cert, pubs, subs, seconds, i)
        for i, players in enumerate(data_cases):
            rows += await _data_case(shard, cert, players, seconds, i)
        return rows
    finally:
        shard.stop()


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure the SFU's forwarding capacity; one row per publishers × subscribers case."""
    cores = sorted(os.sched_getaffinity(0))
    shard_core = cores[0] if len(cores) > 1 else None
    if len(cores) > 1:
        # The load generator keeps off the shard's core.
        os.sched_setaffinity(0, set(cores[1:]))
    cases = [(10, 20), (20, 40)] if quick else [(10, 20), (20, 40), (40, 40), (20, 80)]
    data_cases = [10] if quick else [10, 20]
    seconds = 3.0 if quick else 6.0
    try:
        with loop_runner() as runner:
            return runner.run(asyncio.wait_for(_bench(cases, data_cases, seconds, shard_core),
                                               300))
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cores))


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per row shape (RTP forwarding, data channels)."""
    tables: list[str] = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r), []).append(r)
    for cols, group in groups.items():
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in group:
            out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
        tables.append("\n".join(out))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_media",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small cases, 3 s each")
    args = parser.parse_args(argv)
    print(markdown(run(args.quick)))
    print(f"\nbar: {BAR} forwarded packets/s per shard core (ratio = fwd_per_core_s / bar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
