"""Messages between a spaces gateway and the media shards (see the README, "Media plane").

* ``MediaCall`` (``media.call``, request) answered by ``MediaCallReply``: one WebRTC subject of a
  socket, run on the shard holding its session; the reply's messages go to that socket;
* ``MediaPush`` (``media.push``, send, ordered per shard): messages the shard produced for a
  socket other than the caller;
* ``MediaLost`` (``media.lost``, send): the shard drops a session (draining); the gateway closes
  the socket so the client reconnects onto a live shard.
"""

from __future__ import annotations

from typing import ClassVar

from hubbub.contracts.base import Contract, Json, contract


__all__ = ["MediaCall", "MediaCallReply", "MediaLost", "MediaMessage", "MediaPush"]


@contract
class MediaMessage(Contract):
    """One Wired message for a socket: its subject and its JSON body (validated by the client
    side: the gateway forwards it as it is)."""

    VERSION: ClassVar[int] = 1
    subject: str
    data: Json


@contract
class MediaCall(Contract):
    """Run ``op`` (a WebRTC subject, or ``join``/``leave``/``close``) for ``session``.

    ``data`` is the client's signalling body as it came (the shard's router validates it);
    ``spaces`` the socket's spaces and its player id in each.
    """

    TYPE: ClassVar[str] = "media.call"
    VERSION: ClassVar[int] = 1
    session: str
    gateway: str
    op: str
    data: Json
    spaces: dict[str, int]


@contract
class MediaCallReply(Contract):
    """The messages for the calling socket, in order."""

    TYPE: ClassVar[str] = "media.call.reply"
    VERSION: ClassVar[int] = 1
    messages: tuple[MediaMessage, ...]


@contract
class MediaPush(Contract):
    """Messages for ``session``'s socket produced by another socket's call."""

    TYPE: ClassVar[str] = "media.push"
    VERSION: ClassVar[int] = 1
    session: str
    messages: tuple[MediaMessage, ...]


@contract
class MediaLost(Contract):
    """The shard dropped ``session`` (``reason`` for the log)."""

    TYPE: ClassVar[str] = "media.lost"
    VERSION: ClassVar[int] = 1
    session: str
    reason: str = ""
