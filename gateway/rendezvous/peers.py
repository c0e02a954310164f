"""The peers one gateway has heard: a bounded local table, and which entries Redis must learn.

Sans-I/O: every call takes ``now``; the adapter flushes ``take_dirty()`` to Redis in batches
and reports back which entries Redis refused. Entries follow the one invalidation rule of
``gateway.rendezvous.bindings``: each carries the binding generation it was verified under and
is dropped on news of another generation, on a read showing another one, or at its TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.rendezvous.records import MODE_STREAM, ONLINE_WINDOW, Live
from hubbub.limits import BoundedMap


__all__ = ["BINDING_TTL", "LIVE_REFRESH", "BindingCache", "LocalPeer", "PeerTable"]

LIVE_REFRESH = 10.0
"""Rewrite a live record this long after the last write even if nothing changed (TTL 30 s)."""
MAX_IPS_PER_ID = 16
BINDING_TTL = 5.0
"""How long a binding read for a punch vouches for B's key in B's answer (answers come within
a second or two)."""


@dataclass(slots=True)
class LocalPeer:
    """A peer heard by this process."""

    ip: str
    port: int
    seen: float
    flushed: float
    mode: int
    reg_ip: str  # the IP of the durable binding; liveness records omit it when equal
    gen: bytes  # the binding generation it was verified under (see bindings.py)
    src: object = None
    """The source address exactly as the socket gave it, last time: the same one again means
    the same ``ip``/``port`` without normalising anything (the heartbeat fast path)."""

    def live(self, owner: str, local_port: int) -> Live:
        return Live(self.ip, self.port, self.seen, owner, local_port, self.mode)


class BindingCache:
    """Keys of bindings read for punches in flight: ``peer_id -> (generation, key)``.

    B's answer to a punch is signed with the key the punch's own look-up read (here, or on the
    gateway that pushed to B), instead of reading it again. Entries follow the invalidation
    rule of ``gateway.rendezvous.bindings`` (dropped with the peer's local entry) and live
    ``BINDING_TTL`` seconds.
    """

    def __init__(self, max_size: int = 50_000, ttl: float = BINDING_TTL) -> None:
        self._map: BoundedMap[str, tuple[bytes, bytes]] = BoundedMap(max_size, ttl)

    def put(self, peer_id: str, gen: bytes, pk: bytes, now: float) -> None:
        if gen and pk:
            self._map.put(peer_id, (gen, pk), now)

    def get(self, peer_id: str, now: float) -> tuple[bytes, bytes] | None:
        """``(generation, key)`` read lately for ``peer_id``, if any."""
        return self._map.get(peer_id, now)

    def drop(self, peer_id: str, keep: bytes | None = None) -> None:
        got = self._map.get(peer_id, 0.0)
        if got is not None and got[0] != keep:
            self._map.pop(peer_id)

    def sweep(self, now: float) -> None:
        self._map.sweep(now)


class PeerTable:
    """Local liveness of the peers heard here: bounded, expiring at ``ttl`` since last heard.

    A plain dict (looked up on every heartbeat; an LRU's reordering would cost more than the
    rest of the heartbeat): entries older than ``ttl`` count as absent and are swept in
    bounded steps; at ``max_peers`` the oldest-inserted entry makes room (it costs that peer
    one binding read on its next heartbeat).
    """

    def __init__(self, max_peers: int, ttl: float, max_ip_changes: int = 10_000,
                 ip_change_window: float = 360.0) -> None:
        self.entries: dict[str, LocalPeer] = {}
        self.max_peers = max_peers
        self.ttl = ttl
        self.dirty: dict[str, LocalPeer] = {}
        """Entries Redis must learn: new or moved ones at once, the others once per refresh."""
        self.urgent = False
        """Something in ``dirty`` is new or moved (flush within milliseconds, not the second)."""
        self.ip_changes: BoundedMap[str, dict[str, int]] = BoundedMap(max_ip_changes,
                                                                      ip_change_window)
        self.bindings = BindingCache()
        self._sweep_todo: list[str] = []
        self._online = 0
        self.online = 0
        """Peers heard within the online window, as of the last complete sweep."""

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.entries

    def get(self, peer_id: str, now: float) -> LocalPeer | None:
        peer = self.entries.get(peer_id)
        if peer is None or now - peer.seen > self.ttl:
            return None
        return peer

    def items(self) -> Iterator[tuple[str, LocalPeer]]:
        return iter(list(self.entries.items()))

    def heard(self, peer_id: str, peer: LocalPeer, ip: str, port: int, mode: int,
              now: float, src: object = None) -> None:
        """``peer`` was heard again from ``ip:port`` (``src`` as the socket gave it)."""
        if peer.port != port or peer.mode != mode or peer.ip != ip:
            peer.ip, peer.port, peer.mode = ip, port, mode
            self.dirty[peer_id] = peer
            self.urgent = True
        elif now - peer.flushed >= LIVE_REFRESH:
            self.dirty[peer_id] = peer
        peer.seen = now
        peer.src = src

    def verified(self, peer_id: str, ip: str, port: int, mode: int, reg_ip: str, gen: bytes,
                 now: float, flushed: bool = False, src: object = None) -> LocalPeer:
        """An entry confirmed against the binding (a look-up or a registration just read it).

        ``flushed``: the registration already wrote its liveness record.
        """
        peer = self.entries.get(peer_id)
        if peer is None:
            peer = LocalPeer(ip, port, now, 0.0, mode, reg_ip, gen, src)
            self._put(peer_id, peer)
        else:
            peer.ip, peer.port, peer.mode, peer.seen = ip, port, mode, now
            peer.reg_ip, peer.gen, peer.src = reg_ip, gen, src
        if flushed:
            peer.flushed = now
            self.dirty.pop(peer_id, None)
        else:
            self.dirty[peer_id] = peer
            self.urgent = True
        return peer

    def _put(self, peer_id: str, peer: LocalPeer) -> None:
        entries = self.entries
        while len(entries) >= self.max_peers:
            self.forget(next(iter(entries)))
        entries[peer_id] = peer

    def drop(self, peer_id: str, keep: bytes | None = None) -> bool:
        """Forget ``peer_id`` (its entry and its binding read lately) unless it was verified
        under generation ``keep``."""
        self.bindings.drop(peer_id, keep)
        peer = self.entries.get(peer_id)
        if peer is None or peer.gen == keep:
            return False
        self.forget(peer_id)
        return True

    def forget(self, peer_id: str) -> LocalPeer | None:
        self.bindings.drop(peer_id)
        self.dirty.pop(peer_id, None)
        return self.entries.pop(peer_id, None)

    def take_dirty(self) -> dict[str, LocalPeer]:
        batch, self.dirty = self.dirty, {}
        self.urgent = False
        return batch

    def flushed(self, batch: dict[str, LocalPeer], refused: list[str], now: float) -> list[str]:
        """Redis took ``batch`` except ``refused``: entries heard under a binding that is gone
        or changed (a missed news message). One re-registered meanwhile keeps its new entry.
        Returns the IDs forgotten."""
        for p in batch.values():
            p.flushed = now
        gone = []
        for pid in refused:
            cur = self.entries.get(pid)
            if cur is None or cur.gen == batch[pid].gen:
                self.forget(pid)
                gone.append(pid)
        return gone

    def restore(self, batch: dict[str, LocalPeer]) -> None:
        """A flush failed: retry ``batch`` with the next one (newer updates win)."""
        for pid, p in batch.items():
            self.dirty.setdefault(pid, p)

    def note_ip_change(self, peer_id: str, old_ip: str, new_ip: str, now: float) -> None:
        """Remember IDs seen from several IPs recently (``hubbub admin ic``; no enforcement)."""
        seen = self.ip_changes.get(peer_id, now)
        if seen is None:
            seen = {old_ip: 1}
        if new_ip in seen or len(seen) < MAX_IPS_PER_ID:
            seen[new_ip] = seen.get(new_ip, 0) + 1
        self.ip_changes.put(peer_id, seen, now)

    def sweep(self, now: float, budget: int = 20_000) -> None:
        """Forget up to ``budget`` entries' worth of expired peers (a full pass takes
        ``len / budget`` calls); ``online`` is updated at the end of each pass."""
        self.ip_changes.sweep(now)
        self.bindings.sweep(now)
        if not self._sweep_todo:
            self.online, self._online = self._online, 0
            self._sweep_todo = list(self.entries)
        todo = self._sweep_todo
        entries = self.entries
        for _ in range(min(budget, len(todo))):
            peer_id = todo.pop()
            peer = entries.get(peer_id)
            if peer is None:
                continue
            age = now - peer.seen
            if age > self.ttl:
                self.forget(peer_id)
            elif age < ONLINE_WINDOW:
                self._online += 1

    def stream_peer(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is known here through a registration stream."""
        peer = self.entries.get(peer_id)
        return peer is not None and peer.mode == MODE_STREAM
