"""Spaces benchmark: one space of 256 players on one gateway process and spread over two.

Run ``python -m loadtest.bench_spaces [--quick]``. It starts its own Redis and one gateway, then
a fresh Redis and two gateways (sharing the spaces port with SO_REUSEPORT, so the kernel spreads
the players over both), all on free loopback ports, and measures each set-up in the same run
(the table shows both and their ratio):

* **join storm**: all players connect and join at once; time until the last ``join_success``;
* **chat fan-out**: every player sends one chat at the same moment; ``player_chat`` frames
  delivered per second until every player has every message (N² deliveries);
* **batched positions**: every player sends its 21-byte record at 15 Hz (binary frames, the
  hubbub extension) for a few seconds; observers measure the **tick delay**, from the tick
  boundary that published a record to its arrival in a batch (bar: p99 ≤ 50 ms at 256 players),
  and the end-to-end record latency (send → receive, includes waiting for the tick).

Players send their records in the middle of a tick (wall-clock aligned, like the server's ticks)
so each record's publishing tick is known: the send time travels inside the record's opaque
bytes. Everything binds 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import struct
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from hubbub.runtime import loop_runner
from hubbub.wire.wired.positions import RECORD_SIZE
from loadtest.cluster import LocalCluster, cpu_seconds


__all__ = ["run"]

URI = "https://bench.example/space.glb"
TICK = 1.0 / 15
OBSERVERS = 16
_STAMP = struct.Struct("<d")


class Player:
    def __init__(self, ws: ClientConnection, observer: bool) -> None:
        self.ws = ws
        self.observer = observer
        self.player_id = -1
        self.joined = asyncio.get_running_loop().create_future()
        self.chats = 0
        self.chat_target = 0
        self.chats_done = asyncio.get_running_loop().create_future()
        self.batches = 0
        self.errors: list[Any] = []
        self.records = 0
        self.tick_delays: list[float] = []
        self.latencies: list[float] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    self._on_batch(msg)
                    continue
                obj = orjson.loads(msg)
                subject = obj["subject"]
                if subject == "join_success" and not self.joined.done():
                    self.player_id = obj["data"]["playerId"]
                    self.joined.set_result(time.perf_counter())
                elif subject == "error":
                    self.errors.append(obj["data"])
                    if not self.joined.done() and obj["data"].get("subject") == "join":
                        self.joined.set_exception(RuntimeError(f"join refused: {obj['data']}"))
                elif subject == "player_chat":
                    self.chats += 1
                    if self.chats == self.chat_target and not self.chats_done.done():
                        self.chats_done.set_result(time.perf_counter())

    def _on_batch(self, frame: bytes) -> None:
        now = time.time()
        self.batches += 1
        n = (len(frame) - 1) // RECORD_SIZE
        self.records += n
        if not self.observer:
            return
        for i in range(n):
            off = 1 + i * RECORD_SIZE
            sent = _STAMP.unpack_from(frame, off + 1)[0]
            if not 0 < sent <= now:
                continue
            boundary = math.ceil(sent / TICK) * TICK
            self.tick_delays.append(now - boundary)
            self.latencies.append(now - sent)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _move(p: Player, until: float) -> None:
    """Send a record once per tick, at a fixed random phase in the middle of the tick."""
    phase = random.uniform(0.2, 0.6) * TICK
    pad = bytes(RECORD_SIZE - 1 - _STAMP.size)
    while True:
        now = time.time()
        target = math.floor(now / TICK) * TICK + phase
        if target <= now:
            target += TICK
        if target >= until:
            return
        await asyncio.sleep(target - now)
        record = bytes((p.player_id,)) + _STAMP.pack(time.time()) + pad
        with contextlib.suppress(Exception):
            await p.ws.send(record)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes, from /proc (0 where unreadable)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


async def _bench(url: str, players: int, seconds: float,
                 gateway_pids: list[int]) -> dict[str, float]:
    """One set-up's figures: join storm, chat fan-out, batched positions."""
    fig: dict[str, float] = {}
    t0 = time.perf_counter()

    async def one(i: int) -> Player:
        # permessage-deflate on, as browsers negotiate it
        ws = await connect(url, max_size=2**22, open_timeout=30, ping_interval=None)
        p = Player(ws, observer=i < OBSERVERS)
        await ws.send(orjson.dumps({"subject": "join", "data": URI}).decode())
        await asyncio.wait_for(asyncio.shield(p.joined), 30)
        return p

    crowd = await asyncio.gather(*(one(i) for i in range(players)))
    fig["join_s"] = time.perf_counter() - t0
    try:
        # chat fan-out: everybody chats at once, everybody receives everything
        await asyncio.sleep(0.5)
        for p in crowd:
            p.chats = 0
            p.chat_target = players
        t0 = time.perf_counter()
        frame = orjson.dumps({"subject": "chat", "data": "hello"}).decode()
        await asyncio.gather(*(p.ws.send(frame) for p in crowd))
        done = await asyncio.wait_for(asyncio.gather(*(p.chats_done for p in crowd)), 60)
        fig["chat_s"] = max(done) - t0
        fig["chat_rate"] = players * players / fig["chat_s"]

        # batched positions at 15 Hz
        await asyncio.gather(*(p.ws.send(orjson.dumps(
            {"subject": "subscribe_positions", "data": True}).decode()) for p in crowd))
        until = time.time() + seconds
        cpu0, mine0 = _cpu_seconds(gateway_pids), time.process_time()
        await asyncio.gather(*(_move(p, until) for p in crowd))
        fig["gw_cpu"] = (_cpu_seconds(gateway_pids) - cpu0) / seconds * 100
        fig["bench_cpu"] = (time.process_time() - mine0) / seconds * 100
        await asyncio.sleep(0.3)
        delays = [d for p in crowd for d in p.tick_delays]
        lat = [d for p in crowd for d in p.latencies]
        batches = sum(p.batches for p in crowd)
        fig["tick_p50"] = _pct(delays, 0.5) * 1000
        fig["tick_p99"] = _pct(delays, 0.99) * 1000
        fig["lat_p50"] = _pct(lat, 0.5) * 1000
        fig["lat_p99"] = _pct(lat, 0.99) * 1000
        fig["batches_s"] = batches / seconds
        fig["per_batch"] = sum(p.records for p in crowd) / max(1, batches)
        fig["samples"] = len(delays)
        fig["tick_mean"] = statistics.fmean(delays) * 1000 if delays else float("nan")
    finally:
        await asyncio.gather(*(p.ws.close() for p in crowd), return_exceptions=True)
        for p in crowd:
            p.reader.cancel()
    return fig


def _setup(gateways: int, players: int, seconds: float) -> dict[str, float]:
    env = {"SPACES_SOCKETS_PER_IP": "100000", "LOG_LEVEL": "warning"}
    with LocalCluster(gateways=gateways, shards=0, env=env) as cluster:
        url = f"ws://{cluster.target.host}:{cluster.target.spaces_port}/"
        with loop_runner() as runner:
            try:
                pids = [p.popen.pid for p in cluster.procs if p.role == "gateway"]
                return runner.run(asyncio.wait_for(_bench(url, players, seconds, pids), 180))
            except BaseException:
                print(cluster.logs()[-6000:], file=sys.stderr)
                raise


_ROWS = (
    # key, label, unit, digits
    ("join_s", "join storm: all players connect and join", "s", 3),
    ("chat_rate", "chat fan-out: every player chats once (N² deliveries)", "msgs/s", 0),
    ("tick_p50", "position tick delay p50", "ms", 1),
    ("tick_p99", "position tick delay p99 (bar: <= 50 ms)", "ms", 1),
    ("lat_p50", "position record latency p50 (send -> receive)", "ms", 1),
    ("lat_p99", "position record latency p99", "ms", 1),
    ("batches_s", "position batches delivered", "msgs/s", 0),
    ("per_batch", "records per batch", "records", 0),
    ("gw_cpu", "gateway CPU during positions (all gateways)", "% of a core", 0),
    ("bench_cpu", "benchmark clients' CPU during positions", "% of a core", 0),
)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One space on 1 and on 2 gateway processes, measured in one run; the table rows."""
    players = 128 if quick else 256
    seconds = 3.0 if quick else 8.0
    one = _setup(1, players, seconds)
    two = _setup(2, players, seconds)
    rows: list[dict[str, Any]] = []
    for key, label, unit, digits in _ROWS:
        a, b = one.get(key, float("nan")), two.get(key, float("nan"))
        rows.append({"metric": f"{label}, {players} players", "unit": unit,
                     "1 gateway": round(a, digits) if digits else round(a),
                     "2 gateways": round(b, digits) if digits else round(b),
                     "ratio": round(b / a, 2) if a else float("nan")})
    verdict = "met" if two.get("tick_p99", 1e9) <= 50 else "MISSED"
    rows.append({"metric": f"bar: p99 tick delay <= 50 ms at {players} players, 2 gateways",
                 "unit": "", "1 gateway": "", "2 gateways": verdict, "ratio": ""})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| metric | 1 gateway | 2 gateways | ratio (2/1) | unit |", "|---|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['metric']} | {r['1 gateway']} | {r['2 gateways']} | {r['ratio']} "
                   f"| {r['unit']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_spaces",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="128 players, 3 s of positions")
    args = parser.parse_args(argv)
    print(markdown(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
