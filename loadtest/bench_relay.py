"""Relay benchmark: hubbub's relay against a direct loopback TCP pipe, measured in one run.

Run ``python -m loadtest.bench_relay [--quick]``: it starts its own Redis and two shard processes
on free loopback ports, then measures

* bulk throughput of one relayed pair against a direct loopback TCP pipe (the same sender and
  receiver threads, the same 1 MiB ``sendall`` / ``recv_into`` loop, without the relay), in MB/s:
  several rounds, each a direct window then a relayed one on fresh sockets, medians reported.
  "pinned": in both windows of a round the sender and receiver threads run on the CPUs the
  pair's shard is not pinned to (shards pin themselves, one core each, as in production);
  "unpinned": the load generator shares every core with the shards. Also the relay shard's CPU
  (``/proc`` counters, per GB and as % of its core) and the host's TCP retransmission share
  (``/proc/net/snmp``) in each window;
* the same, pinned, with ``RELAY_PUMP=splice`` (os.splice instead of asyncio transports), on a
  second pair of shards started for it, and that pump's idle memory;
* the same, unpinned, for 8 concurrent pairs;
* the same for one WebSocket -> TCP pair (message re-framing instead of raw bytes);
* the resident memory of the shards holding 1,000 idle paired sessions (above their idle RSS);
* abuse: rounds of 48 WebSocket <-> TCP and WebSocket <-> WebSocket pairs from one address whose
  writer starts a 16 MiB or fragmented message and never finishes it while the reader reads
  nothing: the shards' RSS during the rounds and after the pairs closed (above their RSS before).

It prints a Markdown table; ``run(quick)`` returns the rows for ``hubbub bench``. Everything is
bounded in time and size; nothing leaves loopback.

The module also holds the small blocking relay client the tests use (``RequestRelay`` first
message, WebSocket client framing).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import pb, serialize
from loadtest.bench import module_main
from loadtest.cluster import LocalCluster, cpu_seconds, rss_bytes


__all__ = [
    "ABUSE_KINDS",
    "AbusePair",
    "WsClient",
    "abuse",
    "main",
    "relay_connect",
    "request_relay",
    "request_relay_frame",
    "run",
    "ws_relay_connect",
]


# ------------------------------------------------------------------ client helpers
def request_relay(uuid: str, key: str = "", peer_id: str = "") -> bytes:
    """A serialised ``RendezvousMessage{request_relay}`` as a RustDesk client sends it."""
    msg = pb.RendezvousMessage()
    msg.request_relay.uuid = uuid
    msg.request_relay.licence_key = key
    msg.request_relay.id = peer_id
    return serialize(msg)


def request_relay_frame(uuid: str, key: str = "", peer_id: str = "") -> bytes:
    return encode_frame(request_relay(uuid, key, peer_id))


def relay_connect(port: int, uuid: str, key: str = "", host: str = "127.0.0.1",
                  source: tuple[str, int] | None = None, extra: bytes = b"",
                  timeout: float = 10.0) -> socket.socket:
    """A TCP relay half that has sent its RequestRelay (plus ``extra`` in the same write)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(source)
    s.connect((host, port))
    s.sendall(request_relay_frame(uuid, key) + extra)
    return s


class WsClient:
    """A minimal blocking WebSocket client (masked frames, binary messages)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", path: str = "/ws/relay",
                headers: dict[str, str] | None = None, timeout: float = 10.0,
                source: tuple[str, int] | None = None) -> WsClient:
        s = socket.create_connection((host, port), timeout=timeout, source_address=source)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        client = cls(s)
        while b"\r\n\r\n" not in client._buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during WebSocket upgrade")
            client._buf += chunk
        head, _, rest = bytes(client._buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        client._buf = bytearray(rest)
        return client

    @staticmethod
    def frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
        mask = secrets.token_bytes(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        key = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little") if n else b""
        return head + mask + body

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(self.frame(payload, opcode))

    def recv(self) -> tuple[int, bytes]:
        """Next message as (opcode, payload), fragments joined; raises ConnectionError at EOF."""
        parts: list[bytes] = []
        first = 0
        while True:
            frame = self._parse()
            if frame is None:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("closed")
                self._buf += chunk
                continue
            op, fin, payload = frame
            if op >= 8:
                return op, payload
            if op:
                first, parts = op, []
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def _parse(self) -> tuple[int, bool, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        n = buf[1] & 0x7F
        hl = 2
        if n == 126:
            hl = 4
            if len(buf) < hl:
                return None
            n = int.from_bytes(buf[2:4], "big")
        elif n == 127:
            hl = 10
            if len(buf) < hl:
                return None
            n = int.from_bytes(buf[2:10], "big")
        if len(buf) < hl + n:
            return None
        op, fin = buf[0] & 0x0F, bool(buf[0] & 0x80)
        payload = bytes(buf[hl:hl + n])
        del buf[:hl + n]
        return op, fin, payload

    def close(self) -> None:
        self.sock.close()


def ws_relay_connect(port: int, uuid: str, key: str = "", host: str = "127.0.0.1",
                     headers: dict[str, str] | None = None, timeout: float = 10.0,
                     source: tuple[str, int] | None = None, extra: bytes = b"") -> WsClient:
    """A WebSocket relay half that has sent its RequestRelay (plus ``extra``, raw bytes, in the
    same write)."""
    c = WsClient.connect(port, host, headers=headers, timeout=timeout, source=source)
    c.sock.sendall(c.frame(request_relay(uuid, key)) + extra)
    return c


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)



# ------------------------------------------------------------------ abuse
ABUSE_KINDS = ("tcp-huge", "ws-huge", "ws-fragments", "ws-ws-fragments")
"""Mixed pairs whose writer starts a message and never finishes it, while the reader reads
nothing: a 16 MiB TCP frame for a WebSocket side, a 16 MiB WebSocket frame for a TCP side, a
fragmented WebSocket message kept just under the assembly cap for a TCP side, and an endless
fragmented message for another WebSocket side."""
MAX_RELAYED = 16 * 1024 * 1024
FRAGMENT = 60 * 1024
FRAGMENTS_HELD = 15  # 900 KiB: under the relay's 1 MiB assembly cap, so the pair stays open


def _ws_header(opcode: int, n: int, fin: bool) -> bytes:
    """A masked client frame header with a zero key (payload bytes then go as they are)."""
    first = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        return first + bytes([0x80 | n]) + b"\0\0\0\0"
    if n < 65536:
        return first + bytes([0x80 | 126]) + n.to_bytes(2, "big") + b"\0\0\0\0"
    return first + bytes([0x80 | 127]) + n.to_bytes(8, "big") + b"\0\0\0\0"


class AbusePair:
    """One abusive pair: ``writer`` pushes ``stream`` (``limit`` bytes at most), ``reader``
    never reads."""

    def __init__(self, port: int, kind: str, key: str = "",
                 source: tuple[str, int] | None = None) -> None:
        uuid = secrets.token_hex(8)
        zeros = bytes(FRAGMENT)
        self.limit = 1 << 62
        if kind == "tcp-huge":
            self.reader: socket.socket = ws_relay_connect(port + 2, uuid, key, source=source).sock
            self.writer = relay_connect(port, uuid, key, source=source)
            self.head = ((MAX_RELAYED - 1) << 2 | 3).to_bytes(4, "little")
            self.block = zeros
        elif kind == "ws-huge":
            self.reader = relay_connect(port, uuid, key, source=source)
            self.writer = ws_relay_connect(port + 2, uuid, key, source=source).sock
            self.head = _ws_header(2, MAX_RELAYED - 1, True)
            self.block = zeros
        elif kind in ("ws-fragments", "ws-ws-fragments"):
            self.reader = (relay_connect(port, uuid, key, source=source) if kind == "ws-fragments"
                           else ws_relay_connect(port + 2, uuid, key, source=source).sock)
            self.writer = ws_relay_connect(port + 2, uuid, key, source=source).sock
            self.head = _ws_header(2, FRAGMENT, False) + zeros
            self.block = _ws_header(0, FRAGMENT, False) + zeros
            if kind == "ws-fragments":
                self.limit = len(self.head) + (FRAGMENTS_HELD - 1) * len(self.block)
        else:
            raise ValueError(kind)
        for s in (self.reader, self.writer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.writer.setblocking(False)
        self.pending = memoryview(self.head)
        self.sent = 0
        self.alive = True

    def push(self) -> bool:
        """Send what the socket takes now; False when it took nothing (or the pair ended)."""
        moved = False
        while self.alive and self.sent < self.limit:
            if not self.pending:
                self.pending = memoryview(self.block)
            try:
                n = self.writer.send(self.pending[:self.limit - self.sent])
            except BlockingIOError:
                break
            except OSError:
                self.alive = False
                break
            self.pending = self.pending[n:]
            self.sent += n
            moved = True
        return moved

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


def abuse(port: int, pairs_per_kind: int, seconds: float, key: str = "",
          source: tuple[str, int] | None = None,
          sample: Callable[[], None] | None = None) -> list[AbusePair]:
    """Open ``pairs_per_kind`` pairs of every ``ABUSE_KINDS`` kind and push for ``seconds``,
    calling ``sample`` every 0.1 s; returns the pairs, still open."""
    pairs = [AbusePair(port, kind, key, source) for kind in ABUSE_KINDS
             for _ in range(pairs_per_kind)]
    deadline = time.monotonic() + seconds
    next_sample = 0.0
    while (now := time.monotonic()) < deadline:
        moved = [p.push() for p in pairs]
        if sample is not None and now >= next_sample:
            sample()
            next_sample = now + 0.1
        if not any(moved):
            time.sleep(0.01)
    return pairs


# ------------------------------------------------------------------ cluster under test
class _Cluster:
    """A private Redis and ``shards`` relay shards on loopback (unlimited bandwidth)."""

    def __init__(self, shards: int = 2, pump: str = "buffered") -> None:
        self.pump = pump
        self._cluster = LocalCluster(gateways=0, shards=shards, env={
            "TOTAL_BANDWIDTH": "0", "SINGLE_BANDWIDTH": "0", "RELAY_TIMEOUT": "300",
            "RELAY_PUMP": pump})
        self.relay_port = 0
        self.pids: list[int] = []

    def __enter__(self) -> _Cluster:
        self._cluster.__enter__()
        self.relay_port = self._cluster.target.relay_port
        self.pids = [p.popen.pid for p in self._cluster.procs]
        return self

    def __exit__(self, *_: object) -> None:
        self._cluster.stop()

    def owner(self) -> int:
        """Index of the shard holding the (only) active pair, from its ``/metrics``."""
        for i, port in enumerate(self._cluster.ops_ports("shard")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("hubbub_relay_pairs ") and float(line.split()[1]) >= 1:
                        return i
        raise RuntimeError("no shard reports the pair")

    def cores(self, shard: int) -> set[int]:
        return set(os.sched_getaffinity(self.pids[shard]))

    def cpu_seconds(self, shard: int | None = None) -> float:
        return sum(cpu_seconds(pid) for pid in (self.pids if shard is None
                                                 else [self.pids[shard]]))

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)


# ------------------------------------------------------------------ measurements
CHUNK = 1 << 20


def _pin(cores: set[int] | None) -> None:
    """Pin the calling thread (Linux affinity is per thread) to ``cores``."""
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)


def _sender(sock: socket.socket, stop: threading.Event, cores: set[int] | None = None) -> None:
    _pin(cores)
    data = memoryview(os.urandom(CHUNK))
    with contextlib.suppress(OSError):
        while not stop.is_set():
            sock.sendall(data)


def _receiver(sock: socket.socket, counts: list[int], idx: int, stop: threading.Event,
              cores: set[int] | None = None) -> None:
    _pin(cores)
    buf = bytearray(CHUNK)
    sock.settimeout(1.0)
    with contextlib.suppress(OSError):
        while not stop.is_set():
            n = sock.recv_into(buf)
            if not n:
                return
            counts[idx] += n


def _tcp_segments() -> tuple[int, int]:
    """Host-wide TCP (OutSegs, RetransSegs) from /proc/net/snmp; (0, 0) where unavailable."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
                 if ln.startswith("Tcp:")]
        table = dict(zip(lines[0][1:], lines[1][1:], strict=True))
        return int(table["OutSegs"]), int(table["RetransSegs"])
    except (OSError, IndexError, KeyError, ValueError):
        return 0, 0


def _congestion_control() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "?"


class _Window:
    """What one streaming window measured."""

    def __init__(self, rate: float, cpu: float, retrans: float) -> None:
        self.rate = rate  # bytes/s received
        self.cpu = cpu  # relay shard CPU seconds per second of window
        self.retrans = retrans  # host-wide share of TCP segments retransmitted


def _stream(pairs: list[tuple[socket.socket, socket.socket]], seconds: float,
            cores: set[int] | None = None, cluster: _Cluster | None = None,
            shard: int | None = None) -> _Window:
    """Push bytes one way through every (sender, receiver) pair, the load generator's threads
    pinned to ``cores`` (None: unpinned); CPU of ``cluster``'s shard ``shard`` (None: all) and
    TCP counters are sampled over exactly the measured window, after a warm-up."""
    stop = threading.Event()
    counts = [0] * len(pairs)
    threads = []
    for i, (src, dst) in enumerate(pairs):
        threads.append(threading.Thread(target=_sender, args=(src, stop, cores), daemon=True))
        threads.append(threading.Thread(target=_receiver, args=(dst, counts, i, stop, cores),
                                        daemon=True))
    for t in threads:
        t.start()
    time.sleep(min(0.5, seconds / 4))  # warm-up: fill buffers and pipes
    cpu0 = cluster.cpu_seconds(shard) if cluster else 0.0
    segs0 = _tcp_segments()
    start_bytes, start = sum(counts), time.monotonic()
    time.sleep(seconds)
    moved, elapsed = sum(counts) - start_bytes, time.monotonic() - start
    segs1 = _tcp_segments()
    cpu = (cluster.cpu_seconds(shard) - cpu0) if cluster else 0.0
    stop.set()
    for src, dst in pairs:
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(5)
    for src, dst in pairs:
        src.close()
        dst.close()
    out = segs1[0] - segs0[0]
    return _Window(moved / elapsed, cpu / elapsed, (segs1[1] - segs0[1]) / out if out else 0.0)


def _direct_pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n)
        pairs = []
        for _ in range(n):
            c = socket.create_connection(listener.getsockname())
            s, _ = listener.accept()
            pairs.append((c, s))
    return pairs


def _relay_pairs(port: int, n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(n):
        uuid = secrets.token_hex(8)
        a = relay_connect(port, uuid)
        b = relay_connect(port, uuid)
        a.sendall(b"!")
        if recv_exact(b, 1) != b"!":
            raise RuntimeError("relay pair did not form")
        pairs.append((a, b))
    return pairs


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _throughput(cluster: _Cluster, n: int, seconds: float, reps: int,
                pinned: bool) -> dict[str, Any]:
    """``reps`` rounds of (direct pipe, then relayed pairs), fresh sockets each time; medians.

    ``pinned`` (one pair): in both runs of a round the sender and receiver threads are pinned to
    the cores the pair's shard is *not* pinned to, so the load generator gets the same CPUs in
    both cases and the relay its own core, as a pinned shard has in production. Unpinned, the
    load generator and the relay share every core."""
    everything = set(os.sched_getaffinity(0))
    rounds: list[tuple[_Window, _Window]] = []
    shard_cores: set[int] = set()
    for _ in range(reps):
        pairs = _relay_pairs(cluster.relay_port, n)
        shard = cluster.owner() if n == 1 else None
        cores = None
        if pinned and shard is not None:
            shard_cores = cluster.cores(shard)
            cores = (everything - shard_cores) or everything
        direct = _stream(_direct_pairs(n), seconds, cores)
        relayed = _stream(pairs, seconds, cores, cluster, shard)
        rounds.append((direct, relayed))
    d = _median([r[0].rate for r in rounds])
    rl = _median([r[1].rate for r in rounds])
    ratio = _median([r[1].rate / r[0].rate for r in rounds if r[0].rate])
    cpu = _median([r[1].cpu for r in rounds])
    retrans = (f"{100 * _median([r[0].retrans for r in rounds]):.2f} / "
               f"{100 * _median([r[1].retrans for r in rounds]):.2f}")
    placement = (f"load generator on CPU {sorted(everything - shard_cores) or sorted(everything)},"
                 f" relay shard on CPU {sorted(shard_cores)}" if pinned and shard_cores
                 else "load generator unpinned (shares the shards' cores)")
    bar = n == 1 and pinned and cluster.pump == "buffered"  # the bar is for the default pump
    return {"case": f"{n} pair{'s' if n > 1 else ''}, bulk one way"
                    + (", pinned" if pinned else ", unpinned")
                    + (f", {cluster.pump} pump" if cluster.pump != "buffered" else ""),
            "direct MB/s": round(d / 1e6), "relay MB/s": round(rl / 1e6),
            "relay/direct": round(ratio, 2),
            "relay CPU s/GB": round(cpu / (rl / 1e9), 2) if rl else None,
            "relay core %": round(100 * cpu),
            "TCP retrans % direct / relay": retrans,
            "note": f"median of {reps}; {placement}; congestion control {_congestion_control()}",
            "bar": "relay/direct >= 0.75" if bar else "-",
            "ok": ratio >= 0.75 if bar else None}


def _ws_bridge(cluster: _Cluster, seconds: float) -> dict[str, Any]:
    """One WebSocket -> TCP pair: every 64 KiB binary message re-framed for the TCP side."""
    uuid = secrets.token_hex(8)
    w = ws_relay_connect(cluster.relay_port + 2, uuid)
    t = relay_connect(cluster.relay_port, uuid)
    w.send(b"!")
    recv_exact(t, 2)
    # A zero masking key is valid and keeps the client's cost out of the measurement.
    payload = os.urandom(65536)
    frame = bytes([0x82, 0x80 | 127]) + len(payload).to_bytes(8, "big") + b"\0\0\0\0" + payload

    stop = threading.Event()
    block = frame * 16

    def send() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                w.sock.sendall(block)

    counts = [0]
    threads = [threading.Thread(target=send, daemon=True),
               threading.Thread(target=_receiver, args=(t, counts, 0, stop), daemon=True)]
    for th in threads:
        th.start()
    time.sleep(min(0.5, seconds / 4))
    cpu0, n0, start = cluster.cpu_seconds(), counts[0], time.monotonic()
    time.sleep(seconds)
    moved, elapsed, cpu = counts[0] - n0, time.monotonic() - start, cluster.cpu_seconds() - cpu0
    stop.set()
    for s in (w.sock, t):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    for th in threads:
        th.join(5)
    w.close()
    t.close()
    rate = moved / elapsed
    return {"case": "1 pair, WebSocket -> TCP (message bridge)", "relay MB/s": round(rate / 1e6),
            "relay CPU s/GB": round(cpu / (moved / 1e9), 2) if moved else None, "bar": "-",
            "ok": None}


def _idle(cluster: _Cluster, n: int) -> dict[str, Any]:
    time.sleep(1.0)
    before = cluster.rss_bytes()
    socks: list[socket.socket] = []
    try:
        for start in range(0, n, 100):  # in bursts of 100 pairs, as many clients would
            pairs = []
            for _ in range(min(100, n - start)):
                uuid = secrets.token_hex(8)
                a = relay_connect(cluster.relay_port, uuid)
                b = relay_connect(cluster.relay_port, uuid)
                socks += [a, b]
                pairs.append((a, b))
            for a, _b in pairs:
                a.sendall(b"?")
            for _a, b in pairs:
                if recv_exact(b, 1) != b"?":
                    raise RuntimeError("idle pair did not form")
        time.sleep(3.0)  # let the shards free the pipes of now idle pairs
        after = cluster.rss_bytes()
    finally:
        for s in socks:
            s.close()
    delta = (after - before) / 1e6
    return {"case": f"{n} idle paired sessions"
                    + (f", {cluster.pump} pump" if cluster.pump != "buffered" else ""),
            "shards RSS before MB": round(before / 1e6, 1),
            "shards RSS after MB": round(after / 1e6, 1), "added MB": round(delta, 1),
            "bar": "added <= 50 MB", "ok": delta <= 50}


def _abuse(cluster: _Cluster, rounds: int, pairs_per_kind: int = 12) -> dict[str, Any]:
    """Rounds of abusive mixed pairs from one address (``ABUSE_KINDS``): the shards' RSS at its
    peak during a round and 2 s after the last round's pairs closed, above the RSS before."""
    time.sleep(1.5)
    before = cluster.rss_bytes()
    peak = [before]

    def sample() -> None:
        peak[0] = max(peak[0], cluster.rss_bytes())

    after = before
    for _ in range(rounds):
        pairs = abuse(cluster.relay_port, pairs_per_kind, 1.5, source=("127.0.0.5", 0),
                      sample=sample)
        sample()
        for p in pairs:
            p.close()
        time.sleep(2.0)  # the pairs end, a sweep gives their memory back
        after = cluster.rss_bytes()
    during, kept = (peak[0] - before) / 1e6, (after - before) / 1e6
    n = pairs_per_kind * len(ABUSE_KINDS)
    return {"case": f"abuse: {n} mixed pairs never finishing a message, one address, "
                    f"{rounds} rounds",
            "shards RSS before MB": round(before / 1e6, 1),
            "added during MB": round(during, 1), "added after MB": round(kept, 1),
            "note": f"{pairs_per_kind} pairs each: " + ", ".join(ABUSE_KINDS),
            "bar": "during <= 50 MB, after <= 8 MB", "ok": during <= 50 and kept <= 8}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure everything; one dict per table row."""
    seconds = 1.5 if quick else 3.0
    reps = 3 if quick else 5
    rows = []
    with _Cluster(shards=2) as cluster:
        rows.append(_throughput(cluster, 1, seconds, reps, pinned=True))
        rows.append(_throughput(cluster, 1, seconds, reps, pinned=False))
        rows.append(_throughput(cluster, 8, seconds, 1 if quick else 3, pinned=False))
        rows.append(_ws_bridge(cluster, seconds))
        rows.append(_idle(cluster, 200 if quick else 1000))
        rows.append(_abuse(cluster, 2 if quick else 3))
    with _Cluster(shards=2, pump="splice") as cluster:
        rows.insert(1, _throughput(cluster, 1, seconds, reps, pinned=True))
        rows.append(_idle(cluster, 200 if quick else 1000))
    return rows


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, "python -m loadtest.bench_relay",
                       "relay throughput, CPU, idle memory and memory under abuse", run,
                       "shorter windows, 200 idle pairs, 2 abuse rounds")


if __name__ == "__main__":
    raise SystemExit(main())
