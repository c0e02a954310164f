"""The Redis control plane in-process, against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest
from support import new_prefix, redis_server

from hubbub import metrics
from hubbub.contracts import Contract, ContractError, contract
from hubbub.errors import NoListener, RemoteError, RequestTimeout, ServiceError
from registry import Registry, SlotLease, client
from registry.codec import Envelope, Kind, decode, encode


# ------------------------------------------------------------------ typed contracts
@contract
class Note(Contract):
    TYPE: ClassVar[str] = "test.note"
    VERSION: ClassVar[int] = 1
    n: int
    text: str = ""


@contract
class Echo(Contract):
    TYPE: ClassVar[str] = "test.echo"
    VERSION: ClassVar[int] = 2
    n: int


@contract
class EchoOld(Contract):
    """``Echo`` as a process of an older release would send it."""

    TYPE: ClassVar[str] = "test.echo"
    VERSION: ClassVar[int] = 1
    n: int


@contract
class EchoText(Contract):
    """``Echo``'s layout with a field of the wrong type."""

    TYPE: ClassVar[str] = "test.echo"
    VERSION: ClassVar[int] = 2
    n: str


@contract
class EchoReply(Contract):
    TYPE: ClassVar[str] = "test.echo.reply"
    VERSION: ClassVar[int] = 1
    n: int
    sender: str


@contract
class Boom(Contract):
    TYPE: ClassVar[str] = "test.boom"
    VERSION: ClassVar[int] = 1


@contract
class Slow(Contract):
    TYPE: ClassVar[str] = "test.slow"
    VERSION: ClassVar[int] = 1


@contract
class Unhandled(Contract):
    TYPE: ClassVar[str] = "test.nobody"
    VERSION: ClassVar[int] = 1


def test_envelope_roundtrip_and_garbage() -> None:
    env = Envelope(Kind.REQUEST, "x.y", 7, "reply:1", "me", {"a": [1, b"\x00"]})
    assert decode(encode(env)) == env
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", encode(env)[:-1], b"\x97" + b"\xc0" * 7):
        assert decode(junk) is None


async def test_presence_lists_and_expires(make: Any, redis_url: str, prefix: str) -> None:
    a = await make("gateway", "h1")
    b = await make("shard", "h2")
    a.set_info(ports={"spaces": 4000})
    a.beat_soon()
    await asyncio.sleep(0.1)
    recs = {r.id: r for r in await a.processes()}
    assert set(recs) == {a.id, b.id}
    assert recs[a.id].info["ports"] == {"spaces": 4000}
    assert [r.id for r in await a.processes("shard")] == [b.id]
    # A process that stops refreshing disappears after its TTL, without any cleanup.
    for task in b._bg:
        task.cancel()
    await asyncio.sleep(1.7)
    assert [r.id for r in await a.processes()] == [a.id]


async def test_clean_close_removes_presence_at_once(make: Any) -> None:
    a = await make()
    b = await make()
    await b.close()
    assert [r.id for r in await a.processes()] == [a.id]


async def test_send_request_reply_and_errors(make: Any) -> None:
    a = await make()
    b = await make()
    seen: list[tuple[Note, str]] = []
    b.handle(Note, lambda msg, sender: seen.append((msg, sender)))

    async def echo(msg: Echo, sender: str) -> EchoReply:
        await asyncio.sleep(0)
        return EchoReply(msg.n, sender)

    def boom(msg: Boom, sender: str) -> None:
        raise ServiceError("no such room")

    async def slow(msg: Slow, sender: str) -> None:
        await asyncio.sleep(5)

    b.handle(Echo, echo)
    b.handle(Boom, boom)
    b.handle(Slow, slow)
    assert await a.send(b.id, Note(1, "x")) is True
    assert await a.request(b.id, Echo(7), reply=EchoReply) == EchoReply(7, a.id)
    assert seen == [(Note(1, "x"), a.id)]
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, Boom(), reply=EchoReply)
    assert err.value.code == "service" and "no such room" in str(err.value)
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, Unhandled(), reply=EchoReply)
    assert err.value.code == "unknown_type"
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout):
        await a.request(b.id, Slow(), reply=EchoReply, timeout=0.3)
    assert time.monotonic() - t0 < 2
    # Nobody listens on a dead process's inbox: known at once, not after a timeout.
    assert await a.send("gateway:gone:1:abc", Note(1)) is False
    t0 = time.monotonic()
    with pytest.raises(NoListener):
        await a.request("gateway:gone:1:abc", Echo(1), reply=EchoReply, timeout=5)
    assert time.monotonic() - t0 < 1


async def test_concurrent_requests_get_their_own_replies(make: Any) -> None:
    a = await make()
    b = await make()

    async def double(msg: Echo, sender: str) -> EchoReply:
        await asyncio.sleep(0.01 * (msg.n % 3))
        return EchoReply(msg.n * 2, sender)

    b.handle(Echo, double)
    got = await asyncio.gather(*(a.request(b.id, Echo(i), reply=EchoReply) for i in range(50)))
    assert [r.n for r in got] == [i * 2 for i in range(50)]


async def test_channels_fan_out(make: Any, prefix: str) -> None:
    a = await make()
    b = await make()
    got: list[bytes] = []
    await b.subscribe(prefix + "space:x", got.append)
    await asyncio.sleep(0.05)
    assert await a.publish(prefix + "space:x", b"frame") == 1
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == [b"frame"]
    await b.unsubscribe(prefix + "space:x")
    await asyncio.sleep(0.05)
    assert await a.publish(prefix + "space:x", b"frame") == 0


async def test_slot_leases_are_exclusive_and_expire(make: Any) -> None:
    s1 = await make("shard", "hA")
    s2 = await make("shard", "hA")
    s3 = await make("shard", "hA")
    other_host = await make("shard", "hB")
    l1, l2, l3 = SlotLease(s1, 2), SlotLease(s2, 2), SlotLease(s3, 2)
    assert await l1.try_acquire() == 0
    assert await l2.try_acquire() == 1
    assert await l3.try_acquire() is None
    # Slots are per host: another host has its own.
    assert await SlotLease(other_host, 2).try_acquire() == 0
    # l1 stops refreshing (its shard died): the slot is free after the TTL, l3 takes it.
    await l2.refresh()
    await asyncio.sleep(1.0)
    await l2.refresh()
    await asyncio.sleep(0.7)
    assert await l3.try_acquire() == 0
    from hubbub.errors import LeaseLost

    with pytest.raises(LeaseLost):
        await l1.refresh()
    await l3.release()
    assert await SlotLease(s1, 2).try_acquire() == 0


async def test_reconnects_after_redis_restart() -> None:
    prefix = new_prefix()
    with redis_server(appendonly=True) as srv:
        a = Registry(srv.url, prefix, "shard", "h", ttl=1.5)
        b = Registry(srv.url, prefix, "gateway", "h", ttl=1.5)
        for r in (a, b):
            await r.start()
            assert await r.wait_ready(5)
        lease = SlotLease(a, 2)
        assert await lease.try_acquire() == 0
        a.add_tick(lease.refresh)
        b.handle(Echo, lambda msg, sender: EchoReply(msg.n, sender))
        try:
            srv.stop()
            # Wipe the AOF so the restarted Redis has lost presence and the lease.
            for f in srv.dir.rglob("*"):
                if f.is_file():
                    f.unlink()
            await asyncio.sleep(0.5)
            srv.start()
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                try:
                    ids = {r.id for r in await a.processes()}
                    owner = await a.redis.get(a.key("slot", "h", 0))
                    if ids == {a.id, b.id} and owner == a.id.encode():
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.1)
            assert {r.id for r in await a.processes()} == {a.id, b.id}
            assert await a.redis.get(a.key("slot", "h", 0)) == a.id.encode()
            # Subscriptions are back: request/reply works again.
            deadline = time.monotonic() + 5
            while not b.healthy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await a.request(b.id, Echo(3), reply=EchoReply, timeout=2) == EchoReply(3, a.id)
        finally:
            await a.close()
            await b.close()


async def test_subscribe_right_after_start_and_later(redis_url: str, prefix: str) -> None:
    """A channel added at any moment of the subscriber's life is subscribed exactly once."""
    pub = Registry(redis_url, prefix, "gateway", "h", ttl=1.5)
    await pub.start()
    subs = [Registry(redis_url, prefix, "shard", "h", ttl=1.5) for _ in range(8)]
    got: list[list[bytes]] = [[] for _ in subs]
    try:
        for i, reg in enumerate(subs):
            await reg.start()
            await asyncio.sleep(0.001 * i)  # land at different points of the start-up
            await reg.subscribe(prefix + "early", got[i].append)
        for reg in subs:
            assert await reg.wait_ready(5)
        for i, reg in enumerate(subs):
            await reg.subscribe(prefix + "late", got[i].append)
        counts = dict(await pub.redis.pubsub_numsub(prefix + "early", prefix + "late"))
        assert counts == {(prefix + "early").encode(): 8, (prefix + "late").encode(): 8}
        assert await pub.publish(prefix + "early", b"e") == 8
        assert await pub.publish(prefix + "late", b"l") == 8
        for _ in range(100):
            if all(len(g) == 2 for g in got):
                break
            await asyncio.sleep(0.02)
        assert all(sorted(g) == [b"e", b"l"] for g in got)
    finally:
        for reg in (pub, *subs):
            await reg.close()


def _dropped(reason: str) -> float:
    value: float = metrics.INBOX_DROPPED.labels(reason)._value.get()
    return value


async def _until(check: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_typed_send_and_request(make: Any) -> None:
    a = await make()
    b = await make()
    seen: list[tuple[Note, str]] = []
    b.handle(Note, lambda msg, sender: seen.append((msg, sender)))

    async def echo(msg: Echo, sender: str) -> EchoReply:
        await asyncio.sleep(0)
        return EchoReply(msg.n * 2, sender)

    b.handle(Echo, echo)
    assert await a.send(b.id, Note(1, "hi")) is True
    got = await a.request(b.id, Echo(21), reply=EchoReply)
    assert got == EchoReply(42, a.id)
    await _until(lambda: seen)
    assert seen == [(Note(1, "hi"), a.id)]
    # A reply that is not what the caller expects is its error, not a crash.
    with pytest.raises(ContractError):
        await a.request(b.id, Echo(1), reply=Echo)


async def test_bad_payload_is_counted_and_answered(make: Any) -> None:
    a = await make()
    b = await make()
    b.handle(Echo, lambda msg, sender: EchoReply(msg.n, sender))
    b.handle(Note, lambda msg, sender: None)
    before = _dropped("bad_payload")
    # Another version of the layout, or a field of another type: refused with a clear error.
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, EchoOld(5), reply=EchoReply)
    assert err.value.code == "contract" and "unknown version 1" in str(err.value)
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, EchoText("five"), reply=EchoReply)
    assert err.value.code == "contract" and "field n" in str(err.value)
    # Fire-and-forget garbage (here a bare map) is only counted.
    env = Envelope(Kind.SEND, Note.TYPE, 0, "", a.id, {"n": 1})
    assert await a.publish(a.inbox(b.id), encode(env)) == 1
    await _until(lambda: _dropped("bad_payload") >= before + 3)
    # The handler still serves well-formed messages.
    assert await a.request(b.id, Echo(3), reply=EchoReply) == EchoReply(3, a.id)


async def test_typed_handler_errors_are_answered(make: Any) -> None:
    a = await make()
    b = await make()

    def boom(msg: Echo, sender: str) -> EchoReply:
        raise ServiceError("no such room")

    b.handle(Echo, boom)
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, Echo(1), reply=EchoReply)
    assert err.value.code == "service" and "no such room" in str(err.value)
    b.handle(Echo, lambda msg, sender: {"n": 1})  # a dict is no reply
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, Echo(1), reply=EchoReply)
    assert err.value.code == "internal"


async def test_ordered_messages_keep_order_per_sender(make: Any) -> None:
    a = await make()
    c = await make()
    b = await make()
    got: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def slow(msg: Note, sender: str) -> None:
        if sender == a.id and msg.n == 0:
            await gate.wait()  # a's first message holds a's lane, not c's
        await asyncio.sleep(0.003 * ((msg.n * 7) % 5))
        got.append((sender, msg.n))

    b.handle(Note, slow, ordered=True)
    for n in range(40):
        assert await a.send(b.id, Note(n))
    for n in range(5):
        assert await c.send(b.id, Note(n))
    await _until(lambda: len(got) == 5)
    assert got == [(c.id, n) for n in range(5)]
    gate.set()
    await _until(lambda: len(got) == 45)
    assert [n for s, n in got if s == a.id] == list(range(40))
    # Lanes go away once drained: nothing stays behind per sender.
    await _until(lambda: not b._lanes)
    assert b._laned == 0


async def test_ordered_lane_is_bounded(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "LANE_LIMIT", 3)
    a = await make()
    b = await make()
    gate = asyncio.Event()
    got: list[int] = []

    async def held(msg: Echo, sender: str) -> EchoReply:
        await gate.wait()
        got.append(msg.n)
        return EchoReply(msg.n, sender)

    b.handle(Echo, held, ordered=True)
    before = _dropped("lane_full")
    for n in range(10):
        assert await a.send(b.id, Echo(n))
    await _until(lambda: _dropped("lane_full") >= before + 6)
    # A request that finds the lane full is told so at once.
    with pytest.raises(RemoteError) as err:
        await a.request(b.id, Echo(99), reply=EchoReply)
    assert err.value.code == "lane_full"
    gate.set()
    await _until(lambda: len(got) == 4)
    assert got == [0, 1, 2, 3]
    await _until(lambda: not b._lanes)
    assert b._laned == 0
    assert await a.request(b.id, Echo(5), reply=EchoReply) == EchoReply(5, a.id)
