"""The one building block of every message between hubbub processes.

A contract is a frozen, slotted dataclass that names its message type (``TYPE``) and the version
of its layout (``VERSION``)::

    @contract
    class Lost(Contract):
        TYPE: ClassVar[str] = "media.lost"
        VERSION: ClassVar[int] = 1
        session: str
        reason: str = ""

On the wire it is a msgpack array, the version first, then the fields in declaration order
(``[1, "s1", "drained"]``): arrays are smaller and faster to read than maps, and the version lets
a process in a rolling upgrade refuse a layout it does not know instead of misreading it. Any
change of a field's meaning, type or position is a new ``VERSION``.

Decoding checks the version, the field count and every field's type, and raises nothing but
``ContractError``. Field types: ``str``, ``int``, ``float`` (an int is accepted), ``bool``,
``bytes``, ``X | None``, ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]``, a nested contract, and
``Json`` for opaque client data that the receiver validates itself (passed through unchecked).
The checkers are built once, when the class is decorated; a message is checked by a short list of
plain functions, with no reflection per message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar, dataclass_transform

import msgpack

from hubbub.errors import ContractError


__all__ = ["Contract", "ContractError", "Family", "Json", "contract"]


class _JsonMarker:
    """Marks a field whose value is opaque client data (see ``Json``)."""


Json = Annotated[Any, _JsonMarker]
"""A field holding opaque JSON-like client data (say, a WebRTC signalling body) that the
receiving code validates itself; the contract passes it through unchecked."""

C = TypeVar("C", bound="Contract")
Check = Callable[[Any], Any]
"""Returns the field's value (maybe converted: a list to a tuple); raises ``_Bad``."""
Convert = Callable[[Any], Any]
"""Turns a field's value into what msgpack packs (nested contracts into arrays)."""


class _Bad(Exception):
    """A field's value has the wrong type (turned into a ``ContractError`` naming the field)."""


class Contract:
    """Base of every contract; decorate subclasses with ``@contract``."""

    __slots__ = ()

    TYPE: ClassVar[str] = ""
    """The message type (the registry routes on it); empty for contracts only nested in others."""
    VERSION: ClassVar[int]
    _checks: ClassVar[tuple[Check, ...]]
    _names: ClassVar[tuple[str, ...]]

    def to_array(self) -> list[Any]:
        """``[VERSION, field, ...]``, ready for msgpack (nested contracts as arrays too);
        generated for each class by ``@contract``."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The msgpack bytes of ``to_array()``."""
        data: bytes = msgpack.packb(self.to_array(), use_bin_type=True)
        return data

    @classmethod
    def from_array(cls: type[C], obj: Any) -> C:
        """The contract from a decoded msgpack value (``to_array``'s output).

        ``@contract`` replaces this with code generated for the class (the same checks, inline);
        this generic version reports what is wrong.

        Raises:
            ContractError: not an array of this version with fields of the declared types.
        """
        return cls._checked(obj)

    @classmethod
    def _checked(cls: type[C], obj: Any) -> C:
        if type(obj) is not list:
            raise ContractError(f"{cls._name()}: expected an array, got {type(obj).__name__}")
        checks = cls._checks
        if not obj or obj[0] != cls.VERSION or type(obj[0]) is not int:
            got = obj[0] if obj else None
            raise ContractError(f"{cls._name()}: unknown version {got!r} "
                                f"(this process reads version {cls.VERSION})")
        if len(obj) != len(checks) + 1:
            raise ContractError(f"{cls._name()} v{cls.VERSION}: {len(obj) - 1} fields, "
                                f"expected {len(checks)}")
        values: list[Any] = []
        try:
            for check, value in zip(checks, obj[1:], strict=True):
                values.append(check(value))
            return cls(*values)
        except _Bad as exc:
            # ``values`` holds the fields before the bad one.
            raise ContractError(f"{cls._name()} v{cls.VERSION} field "
                                f"{cls._names[len(values)]}: {exc}") from None
        except (TypeError, ValueError, RecursionError) as exc:
            # A ``__post_init__`` rule, or nesting deeper than the interpreter allows.
            raise ContractError(f"{cls._name()}: {str(exc)[:200]}") from None

    @classmethod
    def decode(cls: type[C], data: bytes) -> C:
        """The contract from its msgpack bytes.

        Raises:
            ContractError: not msgpack, or see ``from_array``.
        """
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as exc:
            raise ContractError(f"{cls._name()}: not msgpack ({exc})") from None
        return cls.from_array(obj)

    @classmethod
    def _name(cls) -> str:
        return cls.TYPE or cls.__name__


class Family:
    """The contracts one pub/sub channel carries, told apart by their type.

    A message is ``[TYPE, [VERSION, field, ...]]`` in msgpack (the contract's own array behind
    its type), so one channel can carry several contracts, each versioned on its own.
    """

    __slots__ = ("_by_type",)

    def __init__(self, *classes: type[Contract]) -> None:
        if any(not c.TYPE for c in classes):
            raise TypeError("every contract of a family needs a TYPE")
        self._by_type = {c.TYPE: c for c in classes}

    def encode(self, msg: Contract) -> bytes:
        data: bytes = msgpack.packb([msg.TYPE, msg.to_array()], use_bin_type=True)
        return data

    def decode(self, data: bytes) -> Contract:
        """The message (one of the family's contracts).

        Raises:
            ContractError: not msgpack, a type outside the family, or see ``from_array``.
        """
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as exc:
            raise ContractError(f"channel message: not msgpack ({exc})") from None
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not str:
            raise ContractError("channel message: expected [type, body]")
        cls = self._by_type.get(obj[0])
        if cls is None:
            raise ContractError(f"channel message: unknown type {obj[0][:64]!r}")
        return cls.from_array(obj[1])


@dataclass_transform(frozen_default=True)
def contract(cls: type[C]) -> type[C]:
    """Make ``cls`` a frozen, slotted dataclass and build its encoder and field checkers.

    Raises:
        TypeError: a field of a type contracts cannot carry, or no ``VERSION`` (at import).
    """
    if not isinstance(cls.__dict__.get("VERSION"), int) or isinstance(cls.VERSION, bool):
        raise TypeError(f"{cls.__name__}: a contract declares VERSION: ClassVar[int]")
    out = dataclasses.dataclass(frozen=True, slots=True)(cls)
    hints = typing.get_type_hints(out, include_extras=True, localns={out.__name__: out})
    fields = dataclasses.fields(out)  # type: ignore[arg-type]
    checks: list[Check] = []
    converts: list[Convert | None] = []
    for f in fields:
        check, convert = _build(hints[f.name], f"{out.__name__}.{f.name}", out)
        checks.append(check)
        converts.append(convert)
    out._checks = tuple(checks)
    out._names = tuple(f.name for f in fields)
    out.to_array = _encoder(out, converts)  # type: ignore[method-assign, assignment]
    out.from_array = classmethod(_decoder(out, checks))  # type: ignore[method-assign, assignment]
    out.__init__ = _initialiser(out, fields)  # type: ignore[method-assign]
    return out


def _initialiser(cls: type[Contract], fields: tuple[Any, ...]) -> Callable[..., None]:
    """``__init__`` setting the slots directly: the frozen dataclass one goes through
    ``object.__setattr__`` per field, which costs about twice as much on the send path."""
    ns: dict[str, Any] = {}
    params, sets = ["self"], []
    for i, f in enumerate(fields):
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: contracts take plain defaults only")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"d{i}"] = f.default
            params.append(f"{f.name}=d{i}")
        ns[f"s{i}"] = cls.__dict__[f.name].__set__
        sets.append(f"s{i}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        ns["_post"] = cls.__post_init__
        sets.append("_post(self)")
    body = "".join(f"\n    {x}" for x in sets) or "\n    pass"
    exec(f"def __init__({', '.join(params)}) -> None:{body}", ns)
    init: Callable[..., None] = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _decoder(cls: type[Contract], checks: list[Check]) -> Callable[..., Any]:
    """``from_array`` for ``cls`` as straight-line code: one type test per simple field, a call
    per other field, the slots set directly. Anything wrong goes to the generic ``_checked``,
    which names the fault (a bad value behind a call is named at once). Generated once per
    class, like the dataclass methods themselves."""
    exact = {c: k for k, c in _CHECK_OF.items()}
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_Bad": _Bad,
                          "_slow": cls._checked, "ContractError": ContractError}
    names = [f"v{i}" for i in range(len(checks))]
    tests, calls, sets = [], [], []
    for i, check in enumerate(checks):
        if check in exact:
            ns[f"t{i}"] = exact[check]
            tests.append(f"type(v{i}) is not t{i}")
        elif check is not _identity:
            # A bad nested value is reported here, never checked twice (deep nesting stays
            # linear).
            ns[f"c{i}"] = check
            ns[f"e{i}"] = f"{cls._name()} v{cls.VERSION} field {cls._names[i]}: "
            calls += ["try:", f"    v{i} = c{i}(v{i})", "except _Bad as exc:",
                      f"    raise ContractError(e{i} + str(exc)) from None"]
        ns[f"s{i}"] = cls.__dict__[cls._names[i]].__set__
        sets.append(f"s{i}(o, v{i})")
    if hasattr(cls, "__post_init__"):
        ns["_post"] = cls.__post_init__
        sets.append("_post(o)")
    lines = [
        "def from_array(cls, obj):",
        "    try:",
        f"        if type(obj) is not list or len(obj) != {len(checks) + 1} "
        f"or obj[0] != {cls.VERSION} or type(obj[0]) is not int:",
        "            return _slow(obj)",
        f"        ({', '.join(['_', *names])},) = obj",
    ]
    if tests:
        lines += [f"        if {' or '.join(tests)}:", "            return _slow(obj)"]
    lines += [f"        {c}" for c in calls]
    lines += ["        o = _new(_cls)"] + [f"        {x}" for x in sets] + ["        return o"]
    lines += [
        "    except (TypeError, ValueError, RecursionError) as exc:",
        "        raise ContractError(f'{cls._name()}: {str(exc)[:200]}') from None",
    ]
    exec("\n".join(lines), ns)
    fn: Callable[..., Any] = ns["from_array"]
    return fn


def _encoder(cls: type[Contract], converts: list[Convert | None]) -> Callable[[Any], list[Any]]:
    """``to_array`` for ``cls`` as one list display (generated once per class)."""
    ns: dict[str, Any] = {}
    items = [str(cls.VERSION)]
    for i, (name, conv) in enumerate(zip(cls._names, converts, strict=True)):
        if conv is None:
            items.append(f"self.{name}")
        else:
            ns[f"c{i}"] = conv
            items.append(f"c{i}(self.{name})")
    exec(f"def to_array(self):\n    return [{', '.join(items)}]", ns)
    fn: Callable[[Any], list[Any]] = ns["to_array"]
    return fn


_SIMPLE: dict[Any, type] = {str: str, int: int, bool: bool, bytes: bytes}


def _build(hint: Any, where: str, owner: type) -> tuple[Check, Convert | None]:
    """The checker and (when needed) the encoder conversion of one field type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        if _JsonMarker in args[1:]:
            return _identity, None
        return _build(args[0], where, owner)
    if hint in _SIMPLE:
        return _exact_cached(_SIMPLE[hint]), None
    if hint is float:
        return _float, None
    if hint is type(None) or hint is None:
        return _none, None
    if isinstance(hint, type) and issubclass(hint, Contract):
        if "_checks" not in hint.__dict__ and hint is not owner:
            raise TypeError(f"{where}: nested {hint.__name__} is not a @contract")
        return _nested(hint), _to_array
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only X | None unions are supported")
        inner, conv = _build(rest[0], where, owner)
        return _optional(inner), (None if conv is None else _optional_convert(conv))
    if origin in (tuple, list):
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"{where}: use tuple[X, ...]")
        inner, conv = _build(args[0], where, owner)
        return _sequence(inner, origin), (None if conv is None else _sequence_convert(conv))
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"{where}: dict keys must be str")
        inner, conv = _build(args[1], where, owner)
        return _mapping(inner), (None if conv is None else _mapping_convert(conv))
    raise TypeError(f"{where}: contracts cannot carry {hint!r} (use Json for opaque data)")


def _identity(value: Any) -> Any:
    return value


def _to_array(value: Any) -> Any:
    return value.to_array()


def _exact(kind: type) -> Check:
    # ``type(...) is``: a bool is no int here, and msgpack yields exactly these types.
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Bad(f"expected {kind.__name__}, got {type(value).__name__}")
        return value
    return check


def _float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        return typing.cast(float, value)
    if kind is int:
        return float(value)
    raise _Bad(f"expected float, got {kind.__name__}")


def _none(value: Any) -> None:
    if value is not None:
        raise _Bad(f"expected nil, got {type(value).__name__}")


def _nested(cls: type[Contract]) -> Check:
    def check(value: Any) -> Any:
        try:
            return cls.from_array(value)
        except ContractError as exc:
            raise _Bad(str(exc)[:200]) from None
    return check


def _optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)
    return check


def _optional_convert(conv: Convert) -> Convert:
    def convert(value: Any) -> Any:
        return None if value is None else conv(value)
    return convert


def _sequence(inner: Check, kind: type) -> Check:
    simple = next((k for k, c in _CHECK_OF.items() if c is inner), None)
    to_tuple = kind is tuple

    def check(value: Any) -> Any:
        if type(value) is not list and type(value) is not tuple:
            raise _Bad(f"expected array, got {type(value).__name__}")
        if simple is not None:
            # The common case (a list of str, say): one pass over the types, no calls.
            for item in value:
                if type(item) is not simple:
                    raise _Bad(f"expected array of {simple.__name__}, got "
                               f"{type(item).__name__} inside")
            return tuple(value) if to_tuple else list(value)
        items = [inner(item) for item in value]
        return tuple(items) if to_tuple else items
    return check


def _sequence_convert(conv: Convert) -> Convert:
    def convert(value: Any) -> Any:
        return [conv(item) for item in value]
    return convert


def _mapping(inner: Check) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not dict:
            raise _Bad(f"expected map, got {type(value).__name__}")
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Bad(f"expected str keys, got {type(key).__name__}")
            out[key] = inner(item)
        return out
    return check


def _mapping_convert(conv: Convert) -> Convert:
    def convert(value: Any) -> Any:
        return {key: conv(item) for key, item in value.items()}
    return convert


_CHECK_OF: dict[type, Check] = {}
"""The one checker per simple type, so sequences of it can check types inline."""


def _exact_cached(kind: type) -> Check:
    if kind not in _CHECK_OF:
        _CHECK_OF[kind] = _exact(kind)
    return _CHECK_OF[kind]
