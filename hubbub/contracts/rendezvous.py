"""Messages of the ID server (rendezvous) between gateways.

* ``RendezvousPush`` (``rd.push``, send): a punch or relay request for peer B goes to the gateway
  whose socket B's registrations reach, which sends ``data`` to B from that socket;
* ``RendezvousDeliver`` (``rd.deliver``, send): B's answer goes to the gateway holding A's
  connection;
* ``AdminCommand`` (``rd.admin``, request) answered by ``AdminReply``: the per-process part of a
  ``hubbub admin`` command;
* ``BindingChanged`` (published on the bindings channel): a peer's binding changed;
* ``AdminSettingsChanged`` (published on the admin channel): a run-time setting changed.
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, contract


__all__ = ["KIND_KEY", "KIND_MOVED", "KIND_REMOVED", "AdminCommand", "AdminReply",
           "AdminSettingsChanged", "BindingChanged", "RendezvousDeliver", "RendezvousPush"]


@contract
class RendezvousPush(Contract):
    """Send ``data`` to peer ``peer_id`` from the socket its registrations reach."""

    TYPE: ClassVar[str] = "rd.push"
    VERSION: ClassVar[int] = 1
    peer_id: str
    ip: str
    """B's address as registered (IP and port) and how it registered (``mode``: 0 UDP)."""
    port: int
    local_port: int
    """The receiving gateway's port B's UDP registrations arrive on (UDP pushes only go out from
    a socket on that port)."""
    mode: int
    data: bytes
    """The encoded RustDesk message for B."""
    a_key: str = ""
    """A's address key: where B's answer must go (empty when no answer is expected)."""
    holder: str = ""
    """Id of the process holding A's connection (hint for the answer's route)."""
    gen: bytes = b""
    pk: bytes = b""
    """B's binding (generation and key) as the sender read it for this punch: B's answer,
    arriving at the receiver, is signed with it instead of reading it again."""


@contract
class RendezvousDeliver(Contract):
    """Hand B's answer ``data`` to A's held connection, known by its address key ``a_key``."""

    TYPE: ClassVar[str] = "rd.deliver"
    VERSION: ClassVar[int] = 1
    a_key: str
    data: bytes


@contract
class AdminCommand(Contract):
    """Run the per-process part of an admin command (``ip-blocker``, ``punch-requests``, …)."""

    TYPE: ClassVar[str] = "rd.admin"
    VERSION: ClassVar[int] = 1
    cmd: str
    args: tuple[str, ...] = ()


@contract
class AdminReply(Contract):
    """A gateway's answer to ``AdminCommand``: ``ok`` with either ``lines`` or a ``count``
    (``ip-blocker`` without arguments), or not ``ok`` with ``text`` saying why."""

    TYPE: ClassVar[str] = "rd.admin.reply"
    VERSION: ClassVar[int] = 1
    ok: bool
    text: str = ""
    lines: tuple[str, ...] = ()
    count: int | None = None


KIND_KEY = "key"
"""Registered (again) with another key or IP, or imported: same ID, new generation."""
KIND_MOVED = "moved"
"""Change ID: the binding (and its liveness) now lives under ``new_id``."""
KIND_REMOVED = "removed"
"""The binding and its liveness are gone."""
_KINDS = (KIND_KEY, KIND_MOVED, KIND_REMOVED)


@contract
class BindingChanged(Contract):
    """A peer's durable binding changed (published by the store on the bindings channel).

    ``gen`` is the generation now in force under ``new_id`` (moved: the same content, so the
    same generation it had under ``peer_id``) or ``peer_id`` (key); empty when removed.
    """

    TYPE: ClassVar[str] = "rd.binding"
    VERSION: ClassVar[int] = 1
    kind: str
    peer_id: str
    new_id: str = ""
    gen: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown binding change {self.kind!r}")
        if not self.peer_id or (self.kind == KIND_MOVED and not self.new_id):
            raise ValueError("a binding change names its ID (and a move its new ID)")


@contract
class AdminSettingsChanged(Contract):
    """Run-time setting ``name`` changed in Redis: every gateway reloads the settings."""

    TYPE: ClassVar[str] = "rd.admin-changed"
    VERSION: ClassVar[int] = 1
    name: str
