"""The gateway's client of the media shards: places spaces and forwards the WebRTC subjects.

Contract with the shards (``hubbub.contracts.media``): ``MediaCall`` requests answered by a
``MediaCallReply`` (the messages for the socket), ``MediaPush`` messages from a shard to a
session's gateway (handled in order per shard), ``MediaLost`` when a shard drains. A space's
media is placed once (``space:<uri>:shard``) on the live, non-draining shard with the fewest media
sessions; a socket's session lives on the shard of the first space it joined, so a socket whose
spaces sit on different shards only gets media in its first space. When the session's shard goes
away the socket is closed with 1012 and the Wired client reconnects onto a live shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from gateway.spaces import metrics
from gateway.spaces.store import shard_key
from hubbub.contracts.media import MediaCall, MediaCallReply, MediaLost, MediaMessage, MediaPush
from hubbub.errors import (
    ContractError,
    NoListener,
    RegistryUnavailable,
    RemoteError,
    RequestTimeout,
)
from hubbub.tasks import TaskSet
from hubbub.wire.wired import outbound
from registry import ProcessRecord, Registry


__all__ = ["MediaSocket", "MediaShardClient"]

log = logging.getLogger("hubbub.spaces.media")

CALL_TIMEOUT = 5.0
MAX_REPLY_MESSAGES = 512
CLOSE_MEDIA_LOST = 1012
LOOK_AGAIN = 0.25
"""Seconds between two registry reads of the shard list when no usable shard is known."""

_PLACE = """
local cur = redis.call('GET', KEYS[1])
if (not cur and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur
"""


class MediaSocket(Protocol):
    """What the media shard client needs from a spaces socket."""

    session: str
    shard: str | None

    def memberships(self) -> dict[str, int]: ...

    def send(self, frame: bytes) -> None: ...

    def send_error(self, code: str, message: str, subject: str | None) -> None: ...

    def abort(self, code: int, reason: str) -> None: ...


class MediaShardClient:
    """Places spaces on shards and forwards media subjects for this gateway's sockets."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.shards: dict[str, ProcessRecord] = {}
        self.sessions: dict[str, MediaSocket] = {}
        self.capabilities: Any = None
        self._place = registry.redis.register_script(_PLACE)
        self._tasks = TaskSet(log, "spaces media")
        self._looked = -1e18
        registry.handle(MediaPush, self._on_push, ordered=True)
        registry.handle(MediaLost, self._on_lost, ordered=True)

    # ----------------------------------------------------------- shard view
    def update_shards(self, records: Iterable[ProcessRecord]) -> None:
        """Refresh the live media shards; sessions on vanished shards are lost."""
        self.shards = {r.id: r for r in records
                       if r.role == "shard" and isinstance(r.info.get("media"), dict)}
        for client in list(self.sessions.values()):
            if client.shard is not None and client.shard not in self.shards:
                self._lose(client, "media shard gone")

    def usable(self) -> list[ProcessRecord]:
        """Live shards accepting new media, least loaded first."""
        def sessions(r: ProcessRecord) -> int:
            load = r.info.get("load") or {}
            try:
                return int(load.get("media_sessions", 0))
            except (TypeError, ValueError):
                return 0
        ups = [r for r in self.shards.values() if r.state == "up"]
        return sorted(ups, key=lambda r: (sessions(r), r.id))

    async def refresh(self) -> None:
        """Read the live shards from the registry now (a just-started gateway, or a view with
        no usable shard: the watcher's next pass may be half a second away)."""
        self._looked = time.monotonic()
        self.update_shards(await self.registry.processes("shard"))

    async def _usable_now(self) -> list[ProcessRecord]:
        usable = self.usable()
        if not usable and time.monotonic() - self._looked >= LOOK_AGAIN:
            await self.refresh()
            usable = self.usable()
        return usable

    async def place(self, uri: str) -> str | None:
        """The shard of ``uri``'s media, placing it when unplaced or on a dead/draining shard."""
        async with self.registry.guard("spaces_place"):
            raw = await self.registry.redis.get(self._shard_key(uri))
        current = raw.decode() if isinstance(raw, bytes) else None
        if current is not None and current not in self.shards:
            # Maybe a shard newer than our view: look again before moving the space away.
            await self.refresh()
        usable = await self._usable_now()
        if current is not None and any(r.id == current for r in usable):
            return current
        if not usable:
            return None
        return await self._claim(uri, current or "", usable[0].id)

    async def _claim(self, uri: str, expected: str, shard: str) -> str:
        """Put ``uri``'s media on ``shard`` unless its placement is no longer ``expected``
        (``""``: unplaced); returns the shard that holds it now."""
        async with self.registry.guard("spaces_place"):
            won: Any = await self._place(keys=[self._shard_key(uri)], args=[expected, shard])
        return won.decode() if isinstance(won, bytes) else str(won)

    def _shard_key(self, uri: str) -> str:
        return shard_key(self.registry, uri)

    async def _any_shard(self) -> str | None:
        """The least loaded usable shard, for work that does not bind a session to it."""
        usable = await self._usable_now()
        return usable[0].id if usable else None

    # ------------------------------------------------------------ sessions
    def attach(self, client: MediaSocket) -> None:
        self.sessions[client.session] = client

    def detach(self, client: MediaSocket) -> None:
        """The socket is gone: tell its shard to drop every transport (in the background)."""
        self.sessions.pop(client.session, None)
        if client.shard is not None:
            self._tasks.spawn(self._quiet(client, "close", None))

    async def handle(self, client: MediaSocket, subject: str, data: Any) -> None:
        """Forward one WebRTC subject; replies or an ``error`` message go to the client."""
        if subject == "get_router_rtp_capabilities" and self.capabilities is not None:
            client.send(outbound.encode("router_rtp_capabilities", self.capabilities))
            return
        shard = client.shard
        if shard is not None and shard not in self.shards:
            self._lose(client, "media shard gone")
            return
        if shard is None:
            try:
                if subject == "get_router_rtp_capabilities":
                    shard = await self._any_shard()  # any shard answers; no binding
                else:
                    shard = await self._bind(client)
            except RegistryUnavailable as exc:
                client.send_error("unavailable", str(exc), subject)
                return
        if shard is None:
            client.send_error("media_unavailable", "no media shard is serving WebRTC", subject)
            return
        try:
            reply = await self.call(client, shard, subject, data)
        except (NoListener, RemoteError, RequestTimeout, RegistryUnavailable,
                ContractError) as exc:
            client.send_error(*self._describe(exc), subject)
            return
        for msg in reply:
            if (subject == "get_router_rtp_capabilities"
                    and msg.subject == "router_rtp_capabilities"):
                self.capabilities = msg.data
            client.send(outbound.encode(msg.subject, msg.data))

    async def lifecycle(self, client: MediaSocket, op: str, data: Any) -> None:
        """``join``/``leave`` for a bound session; failures are logged, not sent."""
        if client.shard is None:
            return
        if op == "join" and isinstance(data, dict) and isinstance(data.get("uri"), str):
            # A session that set up WebRTC before joining: an unplaced space goes to its
            # shard, so the players who come next meet it there.
            try:
                won = await self._claim(data["uri"], "", client.shard)
            except RegistryUnavailable as exc:
                log.debug("placing %s failed: %s", data["uri"], exc)
            else:
                if won != client.shard:
                    log.debug("session %s joined a space whose media is on %s",
                              client.session, won)
        await self._quiet(client, op, data)

    async def call(self, client: MediaSocket, shard: str, op: str,
                   data: Any) -> tuple[MediaMessage, ...]:
        req = MediaCall(client.session, self.registry.id, op, data, client.memberships())
        try:
            reply = await self.registry.request(shard, req, reply=MediaCallReply,
                                                timeout=CALL_TIMEOUT)
        except (NoListener, RemoteError, RequestTimeout, RegistryUnavailable,
                ContractError) as exc:
            metrics.MEDIA_CALLS.labels(type(exc).__name__).inc()
            raise
        metrics.MEDIA_CALLS.labels("ok").inc()
        return reply.messages[:MAX_REPLY_MESSAGES]

    async def _bind(self, client: MediaSocket) -> str | None:
        spaces = client.memberships()
        shard = await (self.place(next(iter(spaces))) if spaces else self._any_shard())
        if shard is not None:
            client.shard = shard
            self.attach(client)
        return shard

    async def _quiet(self, client: MediaSocket, op: str, data: Any) -> None:
        shard = client.shard
        if shard is None:
            return
        try:
            for msg in await self.call(client, shard, op, data):
                client.send(outbound.encode(msg.subject, msg.data))
        except (NoListener, RemoteError, RequestTimeout, RegistryUnavailable,
                ContractError) as exc:
            log.debug("media %s for %s failed: %s", op, client.session, exc)

    @staticmethod
    def _describe(exc: Exception) -> tuple[str, str]:
        if isinstance(exc, NoListener) or (isinstance(exc, RemoteError)
                                           and exc.code == "unknown_type"):
            return "media_unavailable", "no media shard is serving WebRTC"
        if isinstance(exc, RequestTimeout):
            return "media_timeout", "the media shard did not answer in time"
        if isinstance(exc, RegistryUnavailable):
            return "unavailable", "the cluster registry is unreachable"
        code = exc.code if isinstance(exc, RemoteError) else "media_error"
        return "media_error", f"{code}: {exc}"

    def _lose(self, client: MediaSocket, reason: str) -> None:
        self.sessions.pop(client.session, None)
        client.shard = None
        client.abort(CLOSE_MEDIA_LOST, "media shard restarted")
        log.info("session %s lost its media shard (%s)", client.session, reason)

    # -------------------------------------------------------- shard → gateway
    def _on_push(self, push: MediaPush, sender: str) -> None:
        client = self.sessions.get(push.session)
        if client is None or client.shard != sender:
            return
        for msg in push.messages[:MAX_REPLY_MESSAGES]:
            client.send(outbound.encode(msg.subject, msg.data))

    def _on_lost(self, lost: MediaLost, sender: str) -> None:
        client = self.sessions.get(lost.session)
        if client is not None and client.shard == sender:
            self._lose(client, lost.reason)

    async def close(self) -> None:
        await self._tasks.close()
