"""The heartbeat fast path agrees with a full protobuf parse whenever it answers."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from hubbub.wire.rustdesk import fastpath, rendezvous_pb2 as pb
from hubbub.wire.rustdesk.fastpath import register_peer


def _encode(ident: str, serial: int) -> bytes:
    msg = pb.RendezvousMessage(register_peer=pb.RegisterPeer(id=ident, serial=serial))
    data: bytes = msg.SerializeToString()
    return data


def _full(data: bytes) -> tuple[str, int] | None:
    """What a full parse makes of ``data`` (None: not a parseable ``register_peer``)."""
    try:
        msg = pb.RendezvousMessage.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    if msg.WhichOneof("union") != "register_peer":
        return None
    return msg.register_peer.id, msg.register_peer.serial


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_tags_match_the_descriptor() -> None:
    outer = pb.RendezvousMessage.DESCRIPTOR.fields_by_name["register_peer"]
    inner = pb.RegisterPeer.DESCRIPTOR.fields_by_name
    assert fastpath._OUTER == (outer.number << 3 | 2) == 0x32
    assert fastpath._ID == (inner["id"].number << 3 | 2)
    assert fastpath._SERIAL == (inner["serial"].number << 3 | 0)


IDS = ["", "a", "123456789", "x" * 121, "x" * 122, "x" * 123, "x" * 124, "x" * 127,
       "x" * 128, "y" * 300, "é" * 70, "日本語-id", "\U0001f600" * 40, "z" * 16_000]
SERIALS = [0, 1, 127, 128, 300, 16_383, 16_384, 2**21, 2**28, 2**31 - 1, -1, -2, -128,
           -(2**31)]


@pytest.mark.parametrize("ident", IDS)
@pytest.mark.parametrize("serial", SERIALS)
def test_real_encodings_decode_as_protobuf_does(ident: str, serial: int) -> None:
    data = _encode(ident, serial)
    assert register_peer(data) == _full(data) == (ident, serial)


def test_explicit_defaults_are_accepted() -> None:
    for data in (b"\x32\x00", b"\x32\x02\x0a\x00", b"\x32\x02\x10\x00",
                 b"\x32\x04\x0a\x00\x10\x00", b"\x32\x05\x0a\x01a\x10\x00"):
        assert register_peer(data) == _full(data) is not None


def test_lengths_beyond_two_bytes_fall_back() -> None:
    data = _encode("z" * 20_000, 1)
    assert _full(data) is not None
    assert register_peer(data) is None


def _outer(inner: bytes) -> bytes:
    return b"\x32" + _varint(len(inner)) + inner


@pytest.mark.parametrize("data", [
    b"",
    b"\x32",
    b"\x3a\x00",  # another member
    _encode("a", 1) + b"\x32\x00",  # register_peer twice (protobuf merges them)
    _encode("a", 1) + b"\x3a\x00",  # and another member
    _encode("a", 1)[:-1],  # truncated
    _encode("a", 1) + b"\x00",
    b"\x32\x05" + b"\x0a\x01a",  # outer length longer than the data
    _outer(b"\x10\x01\x0a\x01a"),  # serial before id
    _outer(b"\x0a\x01a\x10\x01\x18\x01"),  # unknown inner field
    _outer(b"\x0a\x01a\x0a\x01b"),  # id twice
    _outer(b"\x0a\x01a\x10\x01\x10\x02"),  # serial twice
    _outer(b"\x0a\x02\xff\xfe"),  # bad UTF-8
    _outer(b"\x0a\x02\xed\xa0"),  # truncated sequence
    _outer(b"\x0a\x03\xed\xa0\x80"),  # surrogate
    _outer(b"\x0a\x05abc"),  # id longer than the message
    _outer(b"\x0a\x01a\x10"),  # serial tag without a value
    _outer(b"\x0a\x01a\x10\x80"),  # truncated varint
    _outer(b"\x0a\x01a\x10\x80\x00"),  # non-minimal varint
    _outer(b"\x0a\x01a\x10" + b"\xff\xff\xff\xff\x0f"),  # 2**32 - 1, outside int32
    _outer(b"\x0a\x01a\x10" + b"\x80" * 4 + b"\x10"),  # 2**32, which protobuf truncates
    _outer(b"\x0a\x01a\x10" + b"\x80" * 9 + b"\x02"),  # more than 64 bits
    _outer(b"\x0a\x01a\x10" + b"\x80" * 10 + b"\x01"),  # eleven-byte varint
    b"\x32\x83\x00\x0a\x01a",  # non-minimal outer length
    _outer(b"\x0a\x81\x00a"),  # non-minimal id length
    b"\xb2\x00\x00",  # non-canonical outer tag
    _outer(b"\x8a\x00\x01a"),  # non-canonical inner tag
    _outer(b"\x0a\x01a\x12\x00"),  # serial with the wrong wire type
])
def test_unusual_input_falls_back(data: bytes) -> None:
    assert register_peer(data) is None


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf.insert(pos, rng.randrange(256))
        elif op == 2 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif op == 3:
            del buf[pos:]
        elif op == 4:
            buf += bytes([rng.choice([0x08, 0x10, 0x18, 0x0a, 0x32, 0x3a])]) + _varint(
                rng.randrange(-3, 300))
        else:
            buf[pos:pos] = _varint(rng.choice([0, 1, 2**31, 2**32 + 5, -(2**63)]))
    return bytes(buf)


def _random_message(rng: random.Random) -> bytes:
    ident = rng.choice([
        "".join(rng.choice("ab9é\u00ff\U0001f600") for _ in range(rng.randrange(70))),
        "x" * rng.randrange(300),
    ])
    serial = rng.choice([0, rng.randrange(-(2**31), 2**31), rng.randrange(200),
                         -rng.randrange(1, 5)])
    return _encode(ident, serial)


def test_fuzz_never_disagrees_with_protobuf() -> None:
    rng = random.Random(0x4B1D)
    answered = 0
    for i in range(30_000):
        if i % 5 == 0:
            data = rng.randbytes(rng.randrange(12))
            if data and rng.random() < 0.5:
                data = b"\x32" + data
        elif i % 5 == 1:  # random varints as the serial, mostly near-valid ones
            tail = bytearray(rng.randbytes(rng.choice([1, 2, 3, 4, 5, 5, 6, 9, 10, 10, 11])))
            for j in range(len(tail) - 1):
                if rng.random() < 0.95:
                    tail[j] |= 0x80
            if rng.random() < 0.9:
                tail[-1] &= 0x7F
            if len(tail) == 10 and rng.random() < 0.7:
                tail[4] |= 0xF0
                tail[5:] = b"\xff\xff\xff\xff\x01"
            data = _outer(b"\x0a\x02id\x10" + bytes(tail))
        else:
            data = _mutate(rng, _random_message(rng))
        got = register_peer(data)
        if got is not None:
            answered += 1
            assert got == _full(data), data.hex()
    assert answered > 300  # some mutations stay well-formed heartbeats
