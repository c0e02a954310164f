"""Messages of the spaces gateways.

* ``KickPlayer`` (``spaces.kick``, request) answered by ``KickReply``: an operator closes the
  socket holding a player (the console asks the gateway that holds it);
* on a space's pub/sub channel (``SPACE_CHANNEL``, gateway to gateway): every broadcast is
  serialised once by its origin, as the finished JSON frame, and every gateway with members in
  the space forwards those bytes to its own sockets:

  - ``SpaceFrame``: to every member (the sender too, as the original echoes broadcasts), except
    socket ``exclude`` when it is not empty;
  - ``SpaceJoined`` / ``SpaceLeft``: membership changes; receivers use the player id to avoid
    double or stray notices around a join;
  - ``SpacePositions``: one tick's changed 21-byte records from one gateway;
  - ``SpaceProbe``: lets a gateway see that its new subscription is live.
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, Family, contract


__all__ = ["SPACE_CHANNEL", "Broadcast", "KickPlayer", "KickReply", "SpaceFrame", "SpaceJoined",
           "SpaceLeft", "SpacePositions", "SpaceProbe"]


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


@contract
class SpaceFrame(Contract):
    """A frame for every member of the space but socket ``exclude`` (empty: everyone)."""

    TYPE: ClassVar[str] = "spaces.frame"
    VERSION: ClassVar[int] = 1
    frame: bytes
    exclude: str = ""


@contract
class SpaceJoined(Contract):
    """``player_joined`` of ``player_id`` (not sent to its own socket ``exclude``)."""

    TYPE: ClassVar[str] = "spaces.joined"
    VERSION: ClassVar[int] = 1
    player_id: int
    exclude: str
    frame: bytes


@contract
class SpaceLeft(Contract):
    """``player_left`` of ``player_id``."""

    TYPE: ClassVar[str] = "spaces.left"
    VERSION: ClassVar[int] = 1
    player_id: int
    frame: bytes
    exclude: str = ""


@contract
class SpacePositions(Contract):
    """One tick's position records from ``gateway`` (21 bytes each, back to back)."""

    TYPE: ClassVar[str] = "spaces.positions"
    VERSION: ClassVar[int] = 1
    gateway: str
    records: bytes


@contract
class SpaceProbe(Contract):
    """Published by ``gateway`` right after subscribing; its return proves the subscription."""

    TYPE: ClassVar[str] = "spaces.probe"
    VERSION: ClassVar[int] = 1
    gateway: str
    nonce: bytes


Broadcast = SpaceFrame | SpaceJoined | SpaceLeft
"""What a space channel delivers to the members' sockets."""

SPACE_CHANNEL = Family(SpaceFrame, SpaceJoined, SpaceLeft, SpacePositions, SpaceProbe)
