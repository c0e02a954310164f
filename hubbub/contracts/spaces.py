"""Messages of the spaces gateways between processes.

* ``KickPlayer`` (``spaces.kick``, request) answered by ``KickReply``: an operator closes the
  socket holding a player (the console asks the gateway that holds it).
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, contract


__all__ = ["KickPlayer", "KickReply"]


@contract
class KickPlayer(Contract):
    """Close socket ``socket`` of the receiving gateway (1008)."""

    TYPE: ClassVar[str] = "spaces.kick"
    VERSION: ClassVar[int] = 1
    socket: str


@contract
class KickReply(Contract):
    """Whether the socket was there (and is now closing)."""

    TYPE: ClassVar[str] = "spaces.kick.reply"
    VERSION: ClassVar[int] = 1
    done: bool
