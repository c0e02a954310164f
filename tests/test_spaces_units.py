"""Unit tests of the spaces adapter pieces that need no sockets: delivery filters, queues."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.spaces.client import MAX_QUEUED_BYTES, Client
from gateway.spaces.hub import Membership
from gateway.spaces.store import shard_key
from hubbub.contracts.spaces import SpaceFrame, SpaceJoined, SpaceLeft
from hubbub.wire.wired.inbound import Limits


class StuckSocket:
    """A WebSocket whose peer never reads: every send blocks."""

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None
        self.sent: list[bytes] = []

    async def send(self, data: bytes, text: bool = True) -> None:
        self.sent.append(data)
        await asyncio.sleep(3600)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class RecordingClient:
    def __init__(self, session: str) -> None:
        self.session = session
        self.frames: list[bytes] = []
        self.wants_positions = True

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


def member(session: str = "g/1") -> tuple[Membership, RecordingClient]:
    c = RecordingClient(session)
    return Membership(c), c  # type: ignore[arg-type]


def test_membership_buffers_until_synced_and_filters() -> None:
    m, c = member()
    m.deliver(SpaceJoined(4, "g/9", b"joined4"))   # in the snapshot too
    m.deliver(SpaceJoined(7, "g/8", b"joined7"))   # after the snapshot
    m.deliver(SpaceJoined(9, "g/1", b"me"))        # my own notice
    m.deliver(SpaceLeft(5, b"left5"))              # never seen
    m.deliver(SpaceFrame(b"chat"))
    assert c.frames == []
    m.synced({9, 4})
    assert c.frames == [b"joined7", b"chat"]
    m.deliver(SpaceLeft(7, b"left7"))
    m.deliver(SpaceLeft(7, b"left7"))
    m.deliver(SpaceFrame(b"not-for-me", exclude="g/1"))
    assert c.frames == [b"joined7", b"chat", b"left7"]


def test_membership_buffer_is_bounded() -> None:
    m, c = member()
    for _ in range(5000):
        m.deliver(SpaceFrame(b"x"))
    assert len(m.buffer) == 1024


async def test_slow_receiver_is_disconnected_not_buffered() -> None:
    ws = StuckSocket()
    client = Client("g/1", ws, "127.0.0.1", Limits(), rate=10, burst=10)  # type: ignore[arg-type]
    client.start()
    frame = b"z" * 10000
    for _ in range(MAX_QUEUED_BYTES // len(frame) + 10):
        client.send_binary(frame)
    assert client.closing
    await asyncio.sleep(1.2)  # the close waits (bounded) for the queue to drain
    assert ws.closed == (1008, "too slow to receive")
    await client.stop()


def test_errors_count_by_code() -> None:
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("hubbub_spaces_errors_total", {"code": "space_full"}) or 0
    client: Any = Client.__new__(Client)
    client.closing = True  # nothing is queued, the counter still moves
    client.send_error("space_full", "full", "join")
    after = REGISTRY.get_sample_value("hubbub_spaces_errors_total", {"code": "space_full"})
    assert after == before + 1


class _Req:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class _Conn:
    def __init__(self, peer: str, headers: dict[str, str]) -> None:
        self.remote_address = (peer, 5555)
        self.request = _Req(headers)


def test_client_ip_honours_only_trusted_proxies() -> None:
    from gateway.spaces.service import SpacesService
    from hubbub.net import ProxyList

    svc: Any = SpacesService.__new__(SpacesService)
    svc.proxies = ProxyList(("10.0.0.0/8", "::1"))
    fwd = {"X-Forwarded-For": "203.0.113.7, 10.1.1.1"}
    assert svc._client_ip(_Conn("10.2.3.4", fwd)) == "203.0.113.7"
    assert svc._client_ip(_Conn("::1", {"X-Real-IP": "198.51.100.2"})) == "198.51.100.2"
    assert svc._client_ip(_Conn("::ffff:192.0.2.1", fwd)) == "192.0.2.1"  # untrusted peer
    assert svc._client_ip(_Conn("10.2.3.4", {})) == "10.2.3.4"


def test_deflate_leaves_binary_frames_alone() -> None:
    from websockets.frames import Frame, Opcode

    from gateway.spaces.deflate import TextOnlyDeflate

    ext = TextOnlyDeflate(False, False, 12, 12, {"memLevel": 5})
    batch = Frame(Opcode.BINARY, b"\x01" + bytes(210))
    assert ext.encode(batch) is batch and not batch.rsv1
    text = ext.encode(Frame(Opcode.TEXT, b'{"subject":"player_chat","data":{"playerId":1}}' * 3))
    assert text.rsv1 and len(text.data) < 100
    first = ext.encode(Frame(Opcode.BINARY, b"ab", fin=False))
    cont = ext.encode(Frame(Opcode.CONT, b"cd"))
    assert (first.data, cont.data, first.rsv1, cont.rsv1) == (b"ab", b"cd", False, False)
    # a compressed message after raw ones still decodes on the other side
    peer = TextOnlyDeflate(False, False, 12, 12)
    assert bytes(peer.decode(text).data).startswith(b'{"subject":"player_chat"')
    assert peer.decode(batch) is batch
    again = ext.encode(Frame(Opcode.TEXT, b'{"subject":"player_chat","data":{"playerId":2}}'))
    assert peer.decode(again).data == b'{"subject":"player_chat","data":{"playerId":2}}'


async def test_media_placement_reads_the_shard_list_once(redis_url: str, prefix: str) -> None:
    from gateway.spaces.media import MediaShardClient
    from registry import Registry

    gw = Registry(redis_url, prefix, "gateway", "h1", ttl=1.5)
    shard = Registry(redis_url, prefix, "shard", "h2", ttl=1.5)
    await gw.start()
    try:
        assert await gw.wait_ready(5)
        media = MediaShardClient(gw)
        reads = 0
        processes = gw.processes

        async def counted(role: str | None = None) -> Any:
            nonlocal reads
            reads += 1
            return await processes(role)

        gw.processes = counted  # type: ignore[method-assign]
        uri = "https://example.org/placed.glb"
        await gw.redis.set(shard_key(gw, uri), b"gone-shard")
        # The space sits on a shard this gateway does not know and no shard is live: one look
        # at the shard list, not one more right behind it.
        assert await media.place(uri) is None
        assert reads == 1
        shard.set_info(media={"udp": 1, "tcp": 0})
        await shard.start()
        assert await shard.wait_ready(5)
        await asyncio.sleep(0.3)  # past the pause between two looks at an empty list
        reads = 0
        assert await media.place(uri) == shard.id
        assert reads == 1
        assert await gw.redis.get(shard_key(gw, uri)) == shard.id.encode()
    finally:
        await shard.close()
        await gw.close()
