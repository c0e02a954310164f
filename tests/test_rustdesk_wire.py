"""RustDesk wire codecs without sockets: framing, AddrMangle, protobuf vectors."""

from __future__ import annotations

import random

import pytest
from support import ROOT, io_imports

from hubbub.errors import FrameTooLarge, LocalProtocolError
from hubbub.wire.rustdesk import addr, framing
from hubbub.wire.rustdesk.messages import kind, parse, pb, serialize


HEADER_VECTORS = [
    (0, "00"), (5, "14"), (63, "fc"), (64, "01 01"), (100, "91 01"), (16383, "fd ff"),
    (16384, "02 00 01"), (20000, "82 38 01"), (4194303, "fe ff ff"), (4194304, "03 00 00 01"),
]


@pytest.mark.parametrize(("n", "hexed"), HEADER_VECTORS)
def test_header_vectors(n: int, hexed: str) -> None:
    assert framing.encode_header(n) == bytes.fromhex(hexed)


def test_header_out_of_range() -> None:
    with pytest.raises(LocalProtocolError):
        framing.encode_header(framing.MAX_PAYLOAD + 1)
    with pytest.raises(LocalProtocolError):
        framing.encode_header(-1)


def test_decoder_byte_by_byte_and_pending() -> None:
    payloads = [b"", b"x" * 5, b"y" * 64, b"z" * 300]
    stream = b"".join(framing.encode_frame(p) for p in payloads) + b"\x14abc"
    dec = framing.FrameDecoder(1024)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i:i + 1])
    assert got == payloads
    assert dec.pending() == b"\x14abc"
    assert dec.feed(b"de") == [b"abcde"]
    assert dec.pending() == b""


def test_decoder_non_minimal_header() -> None:
    dec = framing.FrameDecoder()
    # 5 bytes announced with a 2-byte header: legal, the decoder does not require minimal form.
    assert dec.feed(((5 << 2) | 1).to_bytes(2, "little") + b"hello") == [b"hello"]


def test_decoder_rejects_huge_header_without_allocating() -> None:
    dec = framing.FrameDecoder(64 * 1024)
    huge = ((1 << 30) - 1 << 2 | 3).to_bytes(4, "little")
    with pytest.raises(FrameTooLarge):
        dec.feed(huge)
    assert dec.buffered() == 0


def test_decoder_random_split() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 20000)) for _ in range(30)]
    stream = b"".join(framing.encode_frame(p) for p in payloads)
    dec = framing.FrameDecoder(20000)
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 5000)
        got += dec.feed(stream[pos:pos + step])
        pos += step
    assert got == payloads


def test_addr_vectors() -> None:
    assert addr.encode("1.2.3.4", 5, 0) == bytes.fromhex("05000000000002040608")
    assert addr.encode("192.168.16.32", 21116, 1_700_000_000_123_456) == bytes.fromhex(
        "bc748044403000966170")
    v6 = addr.encode("2001:db8::1", 8080)
    assert v6 == bytes.fromhex("20010db8000000000000000000000001") + b"\x90\x1f"
    assert addr.decode(v6) == ("2001:db8::1", 8080)
    assert addr.decode(bytes.fromhex("bc748044403000966170")) == ("192.168.16.32", 21116)


def test_addr_mapped_and_edge_cases() -> None:
    assert addr.encode("::ffff:10.1.2.3", 99, 5) == addr.encode("10.1.2.3", 99, 5)
    assert addr.decode(addr.encode("::ffff:10.1.2.3", 99, 777)) == ("10.1.2.3", 99)
    assert addr.decode(addr.encode("::1", 7)) == ("::1", 7)
    assert addr.decode(b"") == ("0.0.0.0", 0)
    assert addr.decode(b"\x01" * 17) == ("::", 0)
    assert addr.decode(b"\xff" * 16) == ("0.0.0.0", 0)  # garbage decodes, never raises
    assert addr.normalize(("::ffff:127.0.0.1", 5, 0, 0)) == ("127.0.0.1", 5)
    with pytest.raises(ValueError):
        addr.encode("not-an-ip", 1)


def test_addr_random_roundtrip() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        port = rng.randrange(65536)
        assert addr.decode(addr.encode(ip, port, rng.randrange(1 << 32))) == (ip, port)


def _msg(**kw: object) -> pb.RendezvousMessage:
    return pb.RendezvousMessage(**kw)  # type: ignore[arg-type]


def test_protobuf_vectors() -> None:
    vectors = [
        (_msg(register_peer=pb.RegisterPeer(id="123456789")), "320b0a09313233343536373839"),
        (_msg(register_peer_response=pb.RegisterPeerResponse(request_pk=True)), "3a021001"),
        (_msg(register_peer_response=pb.RegisterPeerResponse()), "3a00"),
        (_msg(register_pk_response=pb.RegisterPkResponse()), "820100"),
        (_msg(register_pk_response=pb.RegisterPkResponse(
            result=pb.RegisterPkResponse.UUID_MISMATCH)), "8201020802"),
        (_msg(register_pk_response=pb.RegisterPkResponse(keep_alive=30)), "820102101e"),
        (_msg(punch_hole_response=pb.PunchHoleResponse(
            failure=pb.PunchHoleResponse.OFFLINE)), "5a021802"),
        (_msg(punch_hole_response=pb.PunchHoleResponse()), "5a00"),
        (_msg(test_nat_response=pb.TestNatResponse(port=54321)), "aa010408b1a803"),
        (_msg(online_response=pb.OnlineResponse(states=b"\x80")), "c201030a0180"),
    ]
    for msg, hexed in vectors:
        assert serialize(msg) == bytes.fromhex(hexed), kind(msg)
        back = parse(bytes.fromhex(hexed))
        assert back is not None and kind(back) == kind(msg)


def test_parse_garbage_and_unknown_fields_kept() -> None:
    assert parse(b"\xff\xff\xff") is None
    # PunchHoleSent with an extra field 99 (varint) from a newer client survives a round trip.
    inner = pb.PunchHoleSent(id="b").SerializeToString() + bytes.fromhex("98 06 2a")
    data = b"\x52" + bytes((len(inner),)) + inner
    msg = parse(data)
    assert msg is not None and msg.punch_hole_sent.id == "b"
    assert serialize(msg) == data


def test_wire_package_is_sans_io() -> None:
    for path in (ROOT / "hubbub" / "wire" / "rustdesk").glob("*.py"):
        if not path.name.endswith("_pb2.py"):
            assert not io_imports(path), path.name
