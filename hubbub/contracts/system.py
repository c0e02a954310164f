"""Messages every process answers.

* ``Ping`` (``sys.ping``, request) answered by ``Pong``: liveness and route check; with ``via``
  the receiver first pings that process and reports its answer too (``hubbub status``, tests).
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, contract


__all__ = ["Ping", "Pong", "PongHop"]


@contract
class Ping(Contract):
    """Are you there? ``via``: ping this process id first (empty: no hop)."""

    TYPE: ClassVar[str] = "sys.ping"
    VERSION: ClassVar[int] = 1
    via: str = ""


@contract
class PongHop(Contract):
    """Who answered a ping."""

    VERSION: ClassVar[int] = 1
    id: str
    role: str
    pid: int


@contract
class Pong(Contract):
    """The receiver, and (with ``Ping.via``) the process it pinged on the way."""

    TYPE: ClassVar[str] = "sys.pong"
    VERSION: ClassVar[int] = 1
    id: str
    role: str
    pid: int
    via: PongHop | None = None
