"""The shard's SCTP association against aiortc's own, in-process over a lossy DTLS wire:
bundling, ordering, and recovery from a lost bundle (retransmission, and PR-SCTP's FORWARD TSN
for ``maxRetransmits: 0``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport, parse_packet

from loadtest.media_peer import wait_for
from shards.media.sctp import SACK_DELAY, SCTP_PACKET_LIMIT, SctpAssociation
from shards.media.stack import (
    DtlsEndpoint,
    IceLink,
    certificate_fingerprints,
    drive,
    new_certificate,
)


CERT = new_certificate()
DATA, SACK, FORWARD_TSN = 0, 3, 192
DTLS_ENDPOINTS: list[DtlsEndpoint] = []
"""The endpoints of the pair under test (for the tests of the DTLS record path)."""


@dataclass
class Pair:
    """The shard's association and an aiortc client association joined by a wire on which the
    shard's next datagrams can be dropped."""

    shard: SctpAssociation
    client: RTCSctpTransport
    received: list[tuple[int, bytes]] = field(default_factory=list)
    """(stream id, data) of messages the shard got."""
    packets: list[list[tuple[int, int]]] = field(default_factory=list)
    """Per SCTP packet the client got from the shard: (chunk type, packet length) per chunk."""
    drop: int = 0
    """Datagrams from the shard still to be dropped."""
    dropped: int = 0

    def channel(self, stream_id: int, ordered: bool = True,
                max_retransmits: int | None = None) -> tuple[RTCDataChannel, list[bytes]]:
        got: list[bytes] = []
        ch = RTCDataChannel(self.client, RTCDataChannelParameters(
            label="t", negotiated=True, id=stream_id, ordered=ordered,
            maxRetransmits=max_retransmits))

        @ch.on("message")
        def _on_message(msg: bytes | str) -> None:
            got.append(msg if isinstance(msg, bytes) else msg.encode())

        return ch, got

    def data_packets(self) -> list[list[tuple[int, int]]]:
        return [p for p in self.packets if any(kind == DATA for kind, _ in p)]


@contextlib.asynccontextmanager
async def association_pair() -> AsyncIterator[Pair]:
    shard_link: IceLink
    client_link: IceLink
    state: list[Pair] = []
    loop = asyncio.get_running_loop()

    # Like a network, the wire delivers later, never inside the sender's call.
    def shard_send(data: bytes) -> None:
        if state and state[0].drop > 0:
            state[0].drop -= 1
            state[0].dropped += 1
            return
        loop.call_soon(client_link.feed, data)

    def client_send(data: bytes) -> None:
        loop.call_soon(shard_link.feed, data)

    shard_link = IceLink(shard_send, limit=4096)
    client_link = IceLink(client_send, role="controlling", limit=4096)
    shard_dtls = DtlsEndpoint(shard_link, CERT, "server")
    client_dtls = DtlsEndpoint(client_link, CERT, "client")
    DTLS_ENDPOINTS[:] = [shard_dtls, client_dtls]
    prints = certificate_fingerprints(CERT)
    ok = await asyncio.gather(shard_dtls.start(prints, "client"), client_dtls.start(prints))
    assert list(ok) == [True, True]

    received: list[tuple[int, bytes]] = []

    async def on_message(stream_id: int, pp_id: int, data: bytes) -> None:
        received.append((stream_id, data))

    shard = SctpAssociation(shard_dtls, 5000, 16, on_message)
    client = RTCSctpTransport(client_dtls.dtls)
    pair = Pair(shard, client, received)
    state.append(pair)

    # Every packet the client decrypts, as chunk types, before aiortc handles it.
    handle = client._handle_data

    async def recording(data: bytes) -> None:
        with contextlib.suppress(ValueError):
            pair.packets.append([(c.type, len(data)) for c in parse_packet(data)[3]])
        await handle(data)

    client._handle_data = recording  # type: ignore[method-assign]
    await asyncio.gather(shard.open(262144, 5000),
                         client.start(RTCSctpCapabilities(maxMessageSize=262144), 5000))
    assert await wait_for(lambda: shard.established and client.state == "connected")
    try:
        yield pair
    finally:
        await client.stop()
        await shard.stop()
        await client_dtls.stop()
        await shard_dtls.stop()
        shard_link.close()
        client_link.close()


async def send_burst(a: SctpAssociation, stream_id: int, messages: list[bytes],
                     ordered: bool = True, max_retransmits: int | None = None) -> None:
    """Queue ``messages`` in one event-loop iteration, as a fan-out does."""
    for m in messages:
        await a.send_message(stream_id, 53, m, None, max_retransmits, ordered)


def settled(pair: Pair) -> Callable[[], bool]:
    """Everything the shard sent is acknowledged (or abandoned and forwarded past)."""
    shard = pair.shard
    return lambda: not shard._sent_queue and not shard._outbound_queue \
        and shard._flight_size == 0


async def test_messages_queued_together_share_packets_in_order() -> None:
    async with association_pair() as pair:
        ch, got = pair.channel(1)
        before = pair.shard.packets_sent
        records = [bytes([i]) * 21 for i in range(40)]
        await send_burst(pair.shard, 1, records)
        assert await wait_for(lambda: len(got) == 40)
        assert got == records
        # 40 DATA chunks of 40 bytes padded: two packets rather than 40.
        per_packet = (SCTP_PACKET_LIMIT - 12) // 40
        assert [len(p) for p in pair.data_packets()] == [per_packet, 40 - per_packet]
        assert pair.shard.packets_sent - before == 2
        assert all(size <= SCTP_PACKET_LIMIT for p in pair.packets for _, size in p)
        assert await wait_for(settled(pair))


async def test_fragments_and_small_messages_keep_their_order() -> None:
    async with association_pair() as pair:
        _, got = pair.channel(2)
        big = bytes(range(256)) * 12  # three fragments
        messages = [b"a" * 21, big, b"b" * 21, b"c" * 500, big[:1300], b"d"]
        await send_burst(pair.shard, 2, messages)
        assert await wait_for(lambda: len(got) == len(messages))
        assert got == messages
        assert all(size <= SCTP_PACKET_LIMIT for p in pair.packets for _, size in p)
        # Fewer packets than chunks: small messages rode along with fragments.
        chunks = sum(len(p) for p in pair.data_packets())
        assert len(pair.data_packets()) < chunks
        assert await wait_for(settled(pair))


async def test_a_sack_rides_ahead_of_data_in_the_same_packet() -> None:
    async with association_pair() as pair:
        ch, got = pair.channel(3)

        async def echo(stream_id: int, pp_id: int, data: bytes) -> None:
            await pair.shard.send_message(stream_id, pp_id, data, None, None, True)

        pair.shard._on_message = echo
        await asyncio.sleep(0.05)
        ch.send(b"ping" * 5)
        assert await wait_for(lambda: got == [b"ping" * 5])
        [packet] = pair.data_packets()
        assert [kind for kind, _ in packet] == [SACK, DATA]


async def test_a_lost_bundle_is_retransmitted_in_order() -> None:
    async with association_pair() as pair:
        _, got = pair.channel(4)
        sent: list[bytes] = []
        pair.drop = 1
        for burst in range(6):
            batch = [bytes([burst, i]) * 10 for i in range(8)]
            sent += batch
            await send_burst(pair.shard, 4, batch)
            await asyncio.sleep(0.02)
        assert pair.dropped == 1
        # Reliable and ordered: all of it, in order, once the first bundle is resent.
        assert await wait_for(lambda: len(got) == len(sent), timeout=10.0)
        assert got == sent
        assert await wait_for(settled(pair), timeout=10.0)


async def test_a_lost_bundle_without_retransmits_is_forwarded_past() -> None:
    async with association_pair() as pair:
        _, got = pair.channel(5, ordered=False, max_retransmits=0)
        pair.drop = 1
        late: list[bytes] = []
        lost = [bytes([0, i]) * 10 for i in range(8)]
        await send_burst(pair.shard, 5, lost, ordered=False, max_retransmits=0)
        await asyncio.sleep(0.02)
        for burst in range(1, 6):
            batch = [bytes([burst, i]) * 10 for i in range(8)]
            late += batch
            await send_burst(pair.shard, 5, batch, ordered=False, max_retransmits=0)
            await asyncio.sleep(0.02)
        assert await wait_for(lambda: len(got) == len(late))
        # The lost records are abandoned, never resent; a FORWARD TSN moves the client past.
        assert await wait_for(settled(pair), timeout=10.0)
        assert await wait_for(
            lambda: pair.client._last_received_tsn == (pair.shard._local_tsn - 1) % (1 << 32),
            timeout=10.0)
        assert any(kind == FORWARD_TSN for p in pair.packets for kind, _ in p)
        assert sorted(got) == sorted(late)
        # The channel still carries new records.
        await send_burst(pair.shard, 5, [b"after"], ordered=False, max_retransmits=0)
        assert await wait_for(lambda: got[-1:] == [b"after"])


async def test_the_shard_receives_and_acknowledges_client_messages() -> None:
    async with association_pair() as pair:
        ch, _ = pair.channel(6, ordered=True)
        await asyncio.sleep(0.05)
        for i in range(50):
            ch.send(bytes([i]) * 30)
        assert await wait_for(lambda: len(pair.received) == 50)
        assert pair.received == [(6, bytes([i]) * 30) for i in range(50)]
        client = pair.client
        assert await wait_for(lambda: not client._sent_queue and client._flight_size == 0)


@pytest.mark.parametrize("closing", ["shard", "client"])
async def test_closing_with_pending_sends_is_quiet(closing: str) -> None:
    async with association_pair() as pair:
        pair.channel(7)
        await send_burst(pair.shard, 7, [b"x" * 100] * 20)
        if closing == "shard":
            await pair.shard.stop()
        else:
            await pair.client.stop()
        await asyncio.sleep(0.05)
        assert not pair.shard._flush_queued


async def test_the_shard_delays_a_lone_sack_and_acknowledges_every_second_packet() -> None:
    async with association_pair() as pair:
        ch, _ = pair.channel(8, ordered=True)
        await asyncio.sleep(0.05)
        start = len(pair.packets)
        ch.send(b"one")
        assert await wait_for(lambda: len(pair.received) == 1)
        await asyncio.sleep(0.05)
        assert len(pair.packets) == start  # no SACK yet: it may wait for a second packet
        assert await wait_for(lambda: len(pair.packets) == start + 1, timeout=SACK_DELAY * 3)
        assert [kind for kind, _ in pair.packets[-1]] == [SACK]
        ch.send(b"two")
        await asyncio.sleep(0.01)
        ch.send(b"three")
        assert await wait_for(lambda: len(pair.received) == 3)
        await asyncio.sleep(0.05)  # well within the delay: the second packet is acknowledged
        assert len(pair.packets) == start + 2
        assert not pair.client._sent_queue


async def test_acknowledged_relays_keep_the_association_bookkeeping() -> None:
    async with association_pair() as pair:
        _, got = pair.channel(9, ordered=False, max_retransmits=0)
        shard = pair.shard
        cwnd = shard._cwnd
        for burst in range(20):
            await send_burst(shard, 9, [bytes([burst, i]) * 10 for i in range(5)],
                             ordered=False, max_retransmits=0)
            await asyncio.sleep(0.005)
        assert await wait_for(lambda: len(got) == 100)
        assert await wait_for(settled(pair))
        # The SACKs took the short path yet did what aiortc's would: RTT measured, T3
        # stopped, the window still as large, the ack point at the last TSN sent.
        assert shard._srtt is not None and shard._cwnd >= cwnd
        assert shard._t3_handle is None
        assert shard._last_sacked_tsn == shard._advanced_peer_ack_tsn \
            == (shard._local_tsn - 1) % (1 << 32)


async def test_records_are_read_directly_once_connected_and_close_notify_ends_them() -> None:
    async with association_pair() as pair:
        shard_dtls = pair.shard.transport
        endpoint = next(e for e in DTLS_ENDPOINTS if e.dtls is shard_dtls)
        assert endpoint.link.direct is not None
        client_endpoint = next(e for e in DTLS_ENDPOINTS if e.dtls is pair.client.transport)
        await client_endpoint.stop()  # sends close_notify
        assert await wait_for(lambda: shard_dtls.state == "closed")
        assert endpoint.link.direct is None
        with pytest.raises(ConnectionError):
            endpoint.send_record(b"x" * 20)


async def test_a_handler_that_waits_after_all_is_finished_by_a_task() -> None:
    steps: list[str] = []

    async def handler() -> None:
        steps.append("start")
        await asyncio.sleep(0.01)
        steps.append("end")

    drive(handler())
    assert steps == ["start"]
    assert await wait_for(lambda: steps == ["start", "end"])


async def test_a_lost_last_bundle_comes_again_when_t3_expires() -> None:
    async with association_pair() as pair:
        _, got = pair.channel(10)
        sent: list[bytes] = []
        for burst in range(3):  # round trips measured: the RTO drops to its 1 s minimum
            batch = [bytes([burst, i]) * 10 for i in range(4)]
            sent += batch
            await send_burst(pair.shard, 10, batch)
            await asyncio.sleep(0.02)
        assert await wait_for(lambda: len(got) == len(sent))
        pair.drop = 1
        last = [bytes([9, i]) * 10 for i in range(4)]
        await send_burst(pair.shard, 10, last)
        # Nothing follows, so no SACK can report the loss: only T3 brings it back.
        assert await wait_for(lambda: len(got) == len(sent) + 4, timeout=6.0)
        assert got == sent + last
        assert pair.dropped == 1
        assert await wait_for(settled(pair))
