"""Every relayed byte arrives unchanged, including bytes sent right behind ``RequestRelay``.

Two shard processes on one relay port; each check runs until it has seen both halves meet in
the shard that accepted them and one half handed (socket plus already-read bytes) to the other
shard. The bytes behind the first message are crafted to look like BytesCodec frames with
over-long headers, partial frames and headers of huge frames, plus random bytes; some are sent
in the same write as ``RequestRelay``, before the partner arrives, some after pairing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import pytest
from relay_support import Relay, new_uuid, running_relay
from support import RedisServer

from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from loadtest.bench_relay import WsClient, recv_exact


HANDED = 'hubbub_relay_handoffs_total{outcome="sent"}'


@pytest.fixture(scope="module", params=["splice", "buffered"])
def relay(request: pytest.FixtureRequest, redis_srv: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with running_relay(redis_srv.url, tmp_path_factory.mktemp("relay"), RELAY_TIMEOUT="10",
                       RELAY_PUMP=str(request.param)) as relay:
        yield relay


def long_frame(payload: bytes, header_len: int) -> bytes:
    """A BytesCodec frame whose header is longer than needed (valid, but not the shortest)."""
    return ((len(payload) << 2) | (header_len - 1)).to_bytes(header_len, "little") + payload


def crafted(rng: random.Random) -> bytes:
    return (long_frame(b"hello", 2) + long_frame(rng.randbytes(60), 3) + long_frame(b"", 4)
            + rng.randbytes(1024) + b"\xff\xff\xff\xff" + encode_frame(b"partial")[:5])


def both_placements(relay: Relay, attempt: Callable[[str], None]) -> None:
    """Run ``attempt`` on fresh uuids until halves met on one shard and across shards."""
    seen: set[bool] = set()
    for _ in range(40):
        before = relay.metric(HANDED)
        attempt(new_uuid("bytes"))
        relay.close_all()
        seen.add(relay.metric(HANDED) > before)
        if len(seen) == 2:
            return
    raise AssertionError(f"halves only met {'across' if True in seen else 'within'} shards")


def _tcp_frames(sock_recv: Callable[[int], bytes], count: int) -> list[bytes]:
    dec = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    while len(frames) < count:
        chunk = sock_recv(1 << 16)
        assert chunk, f"closed after {len(frames)} of {count} frames"
        frames += dec.feed(chunk)
    assert len(frames) == count and not dec.buffered()
    return frames


def _ws_messages(client: WsClient, count: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < count:
        op, data = client.recv()
        assert op == 2
        out.append(data)
    return out


def test_tcp_pair_forwards_every_byte_unchanged(relay: Relay) -> None:
    def attempt(uuid: str) -> None:
        rng = random.Random(uuid)
        tails = crafted(rng), crafted(rng)[::-1]
        a = relay.connect(uuid, extra=tails[0])
        time.sleep(0.02)  # a waits; b arrives to a waiting partner (often on the other shard)
        b = relay.connect(uuid, extra=tails[1])
        later = rng.randbytes(4096) + b"\x15\x00", rng.randbytes(100_000) + b"\x02"
        a.sendall(later[0])
        b.sendall(later[1])
        assert recv_exact(b, len(tails[0] + later[0])) == tails[0] + later[0]
        assert recv_exact(a, len(tails[1] + later[1])) == tails[1] + later[1]

    both_placements(relay, attempt)


@pytest.mark.parametrize("ws_first", [True, False], ids=["ws-waits", "tcp-waits"])
def test_tcp_ws_pair_forwards_every_message_unchanged(relay: Relay, ws_first: bool) -> None:
    """Re-framing between BytesCodec and WebSocket changes headers only: every payload arrives
    whole and unchanged, whatever header length the TCP side used."""

    def attempt(uuid: str) -> None:
        rng = random.Random(uuid)
        t_msgs = [b"hello", rng.randbytes(60), rng.randbytes(100_000), rng.randbytes(300),
                  rng.randbytes(70)]
        t_stream = (long_frame(t_msgs[0], 2) + long_frame(t_msgs[1], 4) + long_frame(b"", 3)
                    + encode_frame(t_msgs[2]) + long_frame(t_msgs[3], 3) + long_frame(t_msgs[4], 4))
        t_cut = len(t_stream) - 200  # the last frames are finished after pairing
        w_msgs = [rng.randbytes(10), rng.randbytes(40_000) + rng.randbytes(7), b"\x15\x00hi",
                  rng.randbytes(3000)]
        w_stream = (WsClient.frame(w_msgs[0]) + WsClient.frame(w_msgs[1][:40_000], 2, fin=False)
                    + WsClient.frame(b"ping", 9) + WsClient.frame(w_msgs[1][40_000:], 0)
                    + WsClient.frame(b"") + WsClient.frame(b"text", 1)
                    + WsClient.frame(w_msgs[2]) + WsClient.frame(w_msgs[3]))
        w_cut = len(w_stream) - 1000
        if ws_first:
            w = relay.ws(uuid, extra=w_stream[:w_cut])
            time.sleep(0.02)
            t = relay.connect(uuid, extra=t_stream[:t_cut])
        else:
            t = relay.connect(uuid, extra=t_stream[:t_cut])
            time.sleep(0.02)
            w = relay.ws(uuid, extra=w_stream[:w_cut])
        t.sendall(t_stream[t_cut:])
        w.sock.sendall(w_stream[w_cut:])
        assert _tcp_frames(t.recv, len(w_msgs)) == w_msgs
        got: list[bytes] = []
        while len(got) < len(t_msgs):
            op, data = w.recv()
            if op == 0xA:
                assert data == b"ping"
                continue
            assert op == 2
            got.append(data)
        assert got == t_msgs

    both_placements(relay, attempt)


def test_ws_pair_forwards_every_message_unchanged(relay: Relay) -> None:
    def attempt(uuid: str) -> None:
        rng = random.Random(uuid)
        msgs = [[rng.randbytes(n) for n in (3, 70_000, 126)] for _ in range(2)]
        streams = [WsClient.frame(m[0]) + WsClient.frame(m[1][:9], 2, fin=False)
                   + WsClient.frame(m[1][9:], 0) + WsClient.frame(m[2]) for m in msgs]
        x = relay.ws(uuid, extra=streams[0][:-50])
        time.sleep(0.02)
        y = relay.ws(uuid, extra=streams[1][:-50])
        x.sock.sendall(streams[0][-50:])
        y.sock.sendall(streams[1][-50:])
        assert _ws_messages(y, 3) == msgs[0]
        assert _ws_messages(x, 3) == msgs[1]

    both_placements(relay, attempt)
