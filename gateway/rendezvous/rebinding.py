"""Change ID, and how a gateway's local state follows every change of a binding.

The rule it implements is stated once, in ``gateway.rendezvous.bindings``; the rules deciding
whether a change may happen are the core's (``RendezvousCore.change_id_check``).
"""

from __future__ import annotations

import logging
import time

from gateway.rendezvous import metrics
from gateway.rendezvous.bindings import KIND_MOVED, KIND_REMOVED, BindingChanged
from gateway.rendezvous.conns import Conn
from gateway.rendezvous.core import RendezvousCore
from gateway.rendezvous.store import CHANGE_EXISTS, CHANGE_NOT_OWNER, Store
from hubbub.errors import ContractError, RegistryUnavailable
from hubbub.tasks import TaskSet
from hubbub.wire.rustdesk.messages import pb


__all__ = ["Rebinding"]

log = logging.getLogger("hubbub.rendezvous")

Result = pb.RegisterPkResponse


class Rebinding:
    """Change ID and binding news, over the core's peer table and the registration streams."""

    def __init__(self, store: Store, core: RendezvousCore, streams: dict[str, Conn],
                 tasks: TaskSet) -> None:
        self.store = store
        self.core = core
        self.peers = core.peers
        self.streams = streams
        self.rechecks: set[str] = set()
        self._tasks = tasks

    async def change_id(self, rpk: pb.RegisterPk, ip: str) -> int:
        refused = self.core.change_id_check(rpk, ip, time.time())
        if refused is not None:
            return refused
        try:
            res, gen = await self.store.move_id(rpk.old_id, rpk.id, bytes(rpk.uuid))
        except RegistryUnavailable:
            result = Result.SERVER_ERROR
        else:
            if res == CHANGE_NOT_OWNER:
                result = Result.UUID_MISMATCH
            elif res == CHANGE_EXISTS:
                result = Result.ID_EXISTS
            else:
                result = Result.OK
                if rpk.old_id != rpk.id:
                    # The news reaches every gateway (this one too) through Redis; applying
                    # it here as well makes this process current before the device knows.
                    self.binding_changed(BindingChanged(KIND_MOVED, rpk.old_id, rpk.id, gen))
                    log.info("id changed: %s -> %s", rpk.old_id, rpk.id)
        metrics.REGISTRATIONS.labels("change_id", pb.RegisterPkResponse.Result.Name(result)).inc()
        return int(result)

    def on_news(self, data: bytes) -> None:
        # Synchronous on purpose: the registry runs it in channel order, before any inbox
        # message (a push for the new ID) published after it.
        try:
            ev = BindingChanged.decode(data)
        except ContractError:
            metrics.DROPPED.labels("bad_binding_news").inc()
            return
        self.binding_changed(ev)

    def binding_changed(self, ev: BindingChanged) -> None:
        """Bring local state in line with ``ev`` (idempotent)."""
        if ev.kind == KIND_MOVED:
            conn = self.streams.pop(ev.peer_id, None)
            if conn is not None:
                # The device's own registration stream: it answers to the new ID from now on.
                other = self.streams.get(ev.new_id)
                if other is not None and other is not conn:
                    other.registered_id = None
                self.streams[ev.new_id] = conn
                conn.registered_id, conn.registered_gen = ev.new_id, ev.gen
            self.drop_local(ev.peer_id)
            self.drop_local(ev.new_id, ev.gen)
        elif ev.kind == KIND_REMOVED:
            conn = self.streams.pop(ev.peer_id, None)
            if conn is not None:
                conn.registered_id = None
                conn.close()  # the client reconnects and registers again, if it still may
            self.drop_local(ev.peer_id)
        else:
            self.drop_local(ev.peer_id, ev.gen)

    def drop_local(self, peer_id: str, keep: bytes | None = None) -> None:
        """Forget what this process heard about ``peer_id`` unless it is of generation ``keep``;
        a registration stream for it not of ``keep`` is checked against Redis."""
        self.peers.drop(peer_id, keep)
        conn = self.streams.get(peer_id)
        if conn is not None and conn.registered_gen != keep and peer_id not in self.rechecks:
            self.rechecks.add(peer_id)
            self._tasks.spawn(self._recheck_stream(peer_id, conn))

    async def _recheck_stream(self, peer_id: str, conn: Conn) -> None:
        """Keep a registration stream whose binding changed elsewhere only if it is still its
        device's (same uuid: a new key or IP); otherwise it must register again."""
        try:
            rec = await self.store.peer(peer_id)
        except RegistryUnavailable:
            return  # the next refused flush asks again
        finally:
            self.rechecks.discard(peer_id)
        if self.streams.get(peer_id) is not conn:
            return
        if rec is not None and rec.uuid == conn.registered_uuid:
            conn.registered_gen = rec.gen
            return
        del self.streams[peer_id]
        conn.registered_id = None
        conn.close()
