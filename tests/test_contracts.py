"""Every inter-process contract: round trip, unknown version refused, wrong field type refused."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

import msgpack
import pytest

from hubbub.contracts import Contract, ContractError, Json, contract
from hubbub.contracts.media import MediaCall, MediaCallReply, MediaLost, MediaMessage, MediaPush
from hubbub.contracts.relay import ListsChanged, PairUsage, Transfer, UsageReply, UsageRequest
from hubbub.contracts.rendezvous import (
    AdminCommand,
    AdminReply,
    AdminSettingsChanged,
    BindingChanged,
    RendezvousDeliver,
    RendezvousPush,
)
from hubbub.contracts.spaces import (
    KickPlayer,
    KickReply,
    SpaceFrame,
    SpaceJoined,
    SpaceLeft,
    SpacePositions,
    SpaceProbe,
)
from hubbub.contracts.system import Ping, Pong, PongHop
from hubbub.errors import HubbubError, ProtocolError


PAIR = PairUsage("1.2.3.4:5", "[::1]:6", 1.5, 0.25, 10.0, 5.0, 2.5, "splice", True)
SAMPLES: list[Contract] = [
    RendezvousPush("abc123", "10.0.0.1", 21116, 21116, 0, b"\x00\x01", "10.0.0.2:5", "gw:h:1:aa"),
    RendezvousDeliver("10.0.0.2:5", b"\xff"),
    AdminCommand("ip-blocker", ("1.2.3.4", "-")),
    AdminReply(True, "", ("a", "b"), None),
    AdminReply(True, count=3),
    BindingChanged("moved", "old1", "new1", b"\x01\x02"),
    AdminSettingsChanged("relay_servers"),
    MediaCall("gw/1", "gw", "produce", {"kind": "audio", "rtp": [1, 2.5, None]}, {"s": 3}),
    MediaCallReply((MediaMessage("producer_id", "p1"), MediaMessage("x", {"a": [True]}))),
    MediaPush("gw/2", (MediaMessage("create_consumer", {"playerId": 3}),)),
    MediaLost("gw/3", "draining"),
    KickPlayer("sock-1"),
    KickReply(True),
    SpaceFrame(b'{"subject":"player_chat"}', "gw/1"),
    SpaceJoined(7, "gw/2", b"{}"),
    SpaceLeft(7, b"{}"),
    SpacePositions("gw:h:1:aa", bytes(42)),
    SpaceProbe("gw:h:1:aa", b"\x00" * 8),
    UsageRequest(),
    UsageReply("shard:h:1:bb", (PAIR,), 2),
    ListsChanged("blocklist"),
    Transfer("uuid-1", "ws", "::1", 5, b"\x00rest", 1.5),
    Ping("shard:h:2:cc"),
    Pong("gw:h:1:aa", "gateway", 42, PongHop("shard:h:2:cc", "shard", 43)),
]


def _name(c: Contract) -> str:
    return type(c).__name__


def test_every_contract_has_a_sample_and_a_unique_type() -> None:
    modules = ("media", "relay", "rendezvous", "spaces", "system")
    declared = set()
    for name in modules:
        mod = __import__(f"hubbub.contracts.{name}", fromlist=["__all__"])
        declared |= {getattr(mod, n) for n in mod.__all__ if isinstance(getattr(mod, n), type)}
    assert declared - {PairUsage, MediaMessage, PongHop} == {type(c) for c in SAMPLES}
    types = [cls.TYPE for cls in declared if cls.TYPE]
    assert len(types) == len(set(types))
    assert issubclass(ContractError, ProtocolError) and issubclass(ContractError, HubbubError)


@pytest.mark.parametrize("sample", SAMPLES, ids=_name)
def test_round_trip(sample: Contract) -> None:
    cls = type(sample)
    assert cls.decode(sample.encode()) == sample
    assert cls.from_array(msgpack.unpackb(msgpack.packb(sample.to_array()))) == sample
    assert sample.encode()[1:2] == bytes([cls.VERSION])  # the version comes first
    assert not hasattr(sample, "__dict__")  # slotted
    for f in dataclasses.fields(typing.cast(Any, sample))[:1]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(sample, f.name, 1)


@pytest.mark.parametrize("sample", SAMPLES, ids=_name)
def test_unknown_version_refused(sample: Contract) -> None:
    cls = type(sample)
    arr = sample.to_array()
    for version in (cls.VERSION + 1, 0, "1", None, True):
        arr[0] = version
        with pytest.raises(ContractError, match="unknown version"):
            cls.decode(msgpack.packb(arr))
    for junk in (b"", b"\xc1", msgpack.packb({"v": 1}), msgpack.packb([]),
                 msgpack.packb([cls.VERSION, *sample.to_array()[1:], 0])):
        with pytest.raises(ContractError):
            cls.decode(junk)


def _wrong_value(hint: Any) -> Any:
    """A value of a type ``hint`` refuses (None when the field takes anything)."""
    if typing.get_origin(hint) is typing.Annotated:
        return None  # Json: opaque by design
    return "x" if float in (hint, *typing.get_args(hint)) else 5.5


@pytest.mark.parametrize("sample", SAMPLES, ids=_name)
def test_wrong_field_type_refused(sample: Contract) -> None:
    cls = type(sample)
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(typing.cast(Any, sample))]
    for i, name in enumerate(names, start=1):
        wrong = _wrong_value(hints[name])
        if wrong is None:
            continue
        arr = sample.to_array()
        arr[i] = wrong
        with pytest.raises(ContractError, match=f"field {name}"):
            cls.decode(msgpack.packb(arr))


def test_fields_are_strict_where_msgpack_is_loose() -> None:
    # A bool is no int, an int is a fine float, a str is no bytes.
    with pytest.raises(ContractError):
        KickReply.from_array([1, 1])
    with pytest.raises(ContractError):
        MediaLost.from_array([1, True, ""])
    assert Transfer.from_array([1, "u", "tcp", "::1", 1, b"", 2]).waited == 2.0
    with pytest.raises(ContractError):
        Transfer.from_array([1, "u", "tcp", "::1", 1, "", 2.0])
    with pytest.raises(ContractError, match="field spaces"):
        MediaCall.from_array([1, "s", "g", "op", None, {1: 2}])
    with pytest.raises(ContractError, match="field messages"):
        MediaPush.from_array([1, "s", [[1, "subject-without-version"]]])
    # Lists arrive as tuples where the contract says tuple.
    assert AdminCommand.from_array([1, "peer", ["abc"]]).args == ("abc",)


def test_binding_change_rules_and_the_current_wire_layout() -> None:
    # The layout the bindings channel carries today: [1, kind, id, new_id, gen].
    old = msgpack.packb([1, "key", "abc123", "", b"\x07"])
    assert BindingChanged.decode(old) == BindingChanged("key", "abc123", "", b"\x07")
    for bad in ([1, "renamed", "a", "", b""], [1, "moved", "a", "", b""], [1, "key", "", "", b""]):
        with pytest.raises(ContractError):
            BindingChanged.decode(msgpack.packb(bad))


def test_nesting_too_deep_is_a_contract_error() -> None:
    deep: Any = [1, "leaf"]
    for _ in range(3000):
        deep = [1, "n", deep]

    @contract
    class Node(Contract):
        VERSION: ClassVar[int] = 1
        name: str
        child: Node | None = None

    with pytest.raises(ContractError):
        Node.from_array(deep)


def test_unsupported_field_types_fail_at_import() -> None:
    with pytest.raises(TypeError, match="Json"):
        @contract
        class Loose(Contract):
            VERSION: ClassVar[int] = 1
            body: Any

    with pytest.raises(TypeError, match="VERSION"):
        @contract
        class Unversioned(Contract):
            body: Json

    with pytest.raises(TypeError, match="None"):
        @contract
        class Either(Contract):
            VERSION: ClassVar[int] = 1
            body: int | str


def test_a_family_tells_its_contracts_apart() -> None:
    from hubbub.contracts import Family

    family = Family(KickPlayer, KickReply)
    for msg in (KickPlayer("s"), KickReply(False)):
        assert family.decode(family.encode(msg)) == msg
    with pytest.raises(ContractError, match="unknown type"):
        family.decode(family.encode(Ping()))
    with pytest.raises(TypeError):
        Family(PairUsage)
