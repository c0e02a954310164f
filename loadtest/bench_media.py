"""Media plane benchmark: forwarded Opus packets per shard core, set-ups per second, idle cost,
and data-channel (location record) fan-out.

The SFU (``MediaRouter`` on its UDP mux, uvloop, exactly the shard's code path) runs in a child
process pinned to one core; the load generator (``loadtest.media_peer`` peers: real ICE, DTLS,
SCTP and SRTP, opaque 80-byte Opus-sized payloads at 50 packets/s per publisher) runs in this
process on another core. N publishers × M subscribers share one space, so the shard forwards
N·M·50 packets/s. CPU figures are the child's own ``getrusage`` time over wall time.

    python -m loadtest.bench_media            # full table, then a ramp to saturation
    python -m loadtest.bench_media --runs 3   # the same three times: medians per case
    python -m loadtest.bench_media --quick    # CI-sized

Targets (shard pinned to one core): at most ``TARGET_US`` of shard CPU per forwarded Opus packet
at 40 × 40, at least ``TARGET_PPS`` forwarded packets per second per core with under 1 % loss,
and at least ``TARGET_DC`` data-channel messages per core-second.
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

from hubbub.contracts.media import MediaCall
from hubbub.runtime import loop_runner
from loadtest.bench import median_rows
from loadtest.media_peer import MediaPeer, local_router, opus_rtp_parameters
from shards.media.stack import Certificate, new_certificate


__all__ = ["main", "markdown", "run"]

BAR = 30000
"""Forwarded packets per second per shard core the media plane must reach at least."""
TARGET_US = 4.5
"""Shard CPU microseconds per forwarded packet at 40 publishers × 40 subscribers."""
TARGET_PPS = 200_000
"""Forwarded packets per second per core, with under 1 % loss."""
TARGET_DC = 60_000
"""Data-channel messages forwarded per core-second (twice the 23–30 k of the first SFU)."""
CASES = [(10, 20), (20, 40), (40, 40), (40, 80), (80, 80)]
QUICK_CASES = [(10, 20), (20, 40)]
RAMP_PUBLISHERS = 40
RAMP_STEPS = (40, 60, 80, 100, 105, 110, 120, 140, 160)
"""Subscribers of the ramp's steps (40 publishers each): from 80 k to 320 k packets/s, in
10 k steps just past the 200 k target."""
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
                    reply = router.call(MediaCall.from_array(arg))
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
        payload = MediaCall(session, "bench", op, data, spaces).to_array()
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
            "pubs": pubs,
            "subs": subs,
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


async def _ramp(shard: Shard, cert: Certificate, seconds: float,
                index: int) -> list[dict[str, Any]]:
    """More subscribers step by step until loss reaches 1 % or the shard's core is full;
    the saturation point is the last step under 1 % loss."""
    best: dict[str, Any] | None = None
    steps: list[str] = []
    for step, subs in enumerate(RAMP_STEPS):
        [row] = await _case(shard, cert, RAMP_PUBLISHERS, subs, seconds, 1000 + 10 * index + step)
        steps.append(f"{row['forwarded_pps'] // 1000}k:{row['loss_pct']}%")
        if row["loss_pct"] >= 1.0:
            break
        best = row
        if row["shard_cpu_pct"] >= 95.0:
            break
    return [{
        "case": "saturation ramp (40 pubs, more subs each step)",
        "max_pps_under_1pct_loss": best["forwarded_pps"] if best else 0,
        "at": best["case"] if best else "-",
        "shard_cpu_pct": best["shard_cpu_pct"] if best else 0,
        "fwd_per_core_s": best["fwd_per_core_s"] if best else 0,
        "steps (pps:loss)": " ".join(steps),
    }]


async def _bench(cases: list[tuple[int, int]], data_cases: list[int], seconds: float,
                 core: int | None, ramp: bool) -> list[dict[str, Any]]:
    shard = Shard(core)
    try:
        await asyncio.get_running_loop().run_in_executor(None, shard.rpc, "stats")
        cert = new_certificate()
        rows: list[dict[str, Any]] = []
        for i, (pubs, subs) in enumerate(cases):
            rows += await _case(shard, cert, pubs, subs, seconds, i)
        for i, players in enumerate(data_cases):
            rows += await _data_case(shard, cert, players, seconds, i)
        if ramp:
            rows += await _ramp(shard, cert, min(seconds, 4.0), 0)
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
    cases = QUICK_CASES if quick else CASES
    data_cases = [10] if quick else [10, 20]
    seconds = 3.0 if quick else 6.0
    try:
        with loop_runner() as runner:
            rows = runner.run(asyncio.wait_for(
                _bench(cases, data_cases, seconds, shard_core, ramp=not quick), 600))
            return [_with_target(r) for r in rows]
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cores))


def _with_target(row: dict[str, Any]) -> dict[str, Any]:
    """The row with the target that applies to it and whether it is met."""
    if row.get("pubs") == 40 and row.get("subs") == 40:
        return {**row, "target": f"≤ {TARGET_US} µs/pkt",
                "met": "yes" if row["us_cpu_per_pkt"] <= TARGET_US else "no"}
    if "max_pps_under_1pct_loss" in row:
        return {**row, "target": f"≥ {TARGET_PPS // 1000}k pkt/s per core, < 1 % loss",
                "met": "yes" if row["max_pps_under_1pct_loss"] >= TARGET_PPS
                and row["shard_cpu_pct"] <= 100 else "no"}
    if "fwd_msgs_per_core_s" in row:
        return {**row, "target": f"≥ {TARGET_DC // 1000}k msgs per core-s",
                "met": "yes" if row["fwd_msgs_per_core_s"] >= TARGET_DC else "no"}
    return {**row, "target": "-", "met": "-"}


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per case, the median of every numeric column over several runs (text from the first)."""
    return [_with_target(r) for r in median_rows(runs)]


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per row shape (RTP forwarding, data channels)."""
    tables: list[str] = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        r = {k: v for k, v in r.items() if k not in ("pubs", "subs")}
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
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    args = parser.parse_args(argv)
    runs = [run(args.quick) for _ in range(max(1, args.runs))]
    print(markdown(medians(runs) if len(runs) > 1 else runs[0]))
    print(f"\nbar: {BAR} forwarded packets/s per shard core (ratio = fwd_per_core_s / bar)"
          + (f"; medians of {len(runs)} runs" if len(runs) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
