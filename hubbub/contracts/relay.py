"""Messages of the RustDesk relay shards.

* ``UsageRequest`` (``relay.usage``, request) answered by ``UsageReply``: a shard's running
  pairs and waiting halves (``hubbub relay usage``, the console);
* ``ListsChanged`` (``relay.lists``, send): a relay list changed in Redis, reload both;
* ``Transfer`` (``relay.handoff``): the header sent with a relay half's fd to the shard owning
  its uuid (``SCM_RIGHTS`` over a Unix socket, not the registry).
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, contract


__all__ = ["ListsChanged", "PairUsage", "Transfer", "UsageReply", "UsageRequest"]


@contract
class UsageRequest(Contract):
    """Which pairs do you relay?"""

    TYPE: ClassVar[str] = "relay.usage"
    VERSION: ClassVar[int] = 1


@contract
class PairUsage(Contract):
    """One relayed pair, as hbbr's ``usage`` shows it."""

    VERSION: ClassVar[int] = 1
    a: str
    b: str
    """Both peers' printable addresses ``ip:port``."""
    elapsed: float
    total_mb: float
    peak_kbps: float
    avg_kbps: float
    current_kbps: float
    mode: str
    limited: bool


@contract
class UsageReply(Contract):
    """A shard's pairs and the halves waiting for their partner."""

    TYPE: ClassVar[str] = "relay.usage.reply"
    VERSION: ClassVar[int] = 1
    shard: str
    pairs: tuple[PairUsage, ...]
    waiting: int


@contract
class ListsChanged(Contract):
    """List ``name`` (``blacklist`` or ``blocklist``) changed: reload the lists."""

    TYPE: ClassVar[str] = "relay.lists"
    VERSION: ClassVar[int] = 1
    name: str


@contract
class Transfer(Contract):
    """A relay half in transit (without its fd): its uuid, transport, peer address, the bytes
    already read behind its first message and how long it has waited (seconds)."""

    TYPE: ClassVar[str] = "relay.handoff"
    VERSION: ClassVar[int] = 1
    uuid: str
    transport: str
    peer_ip: str
    peer_port: int
    leftover: bytes
    waited: float
