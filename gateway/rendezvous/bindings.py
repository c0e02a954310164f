"""News of binding changes, and the one rule for what gateways may keep about an ID.

A binding is the durable ``rd:peer:<id>`` record (device uuid, key, registered IP). It changes
when a device registers a new key or IP, when it changes its ID, when an operator removes it and
when ``import-hbbs --overwrite`` rewrites it. Its *generation* is a hash of its content (uuid,
key, IP: ``store.binding_gen``), so a new device, key or IP gives another generation, with
nothing stored (a changed ID keeps its content, hence its generation, under the new ID; the old
ID has no record at all). The store announces every change with a ``BindingChanged`` (a
contract of ``hubbub.contracts.rendezvous``) on the channel ``rd:bindings`` as soon as the
script that made it returns, before the caller answers the device.

Invalidation rule for every local copy a gateway keeps about an ID (liveness heard here, and
any binding cache to come): an entry is stamped with the generation it was verified under and
is dropped as soon as

1. a ``BindingChanged`` names the ID with another generation, or
2. any read of the record (each punch or relay look-up reads it in the same round trip as the
   liveness; each liveness flush checks it in Redis) shows another generation or no record, or
3. its TTL ends.

Nothing is answered from a local entry whose generation was not confirmed by a read made for
that answer (except while Redis is unreachable, when no binding can change either), so a
missed message costs at most a stale heartbeat answer until the next flush (about 10 s), never
a wrong answer to a controller. The key a punch's look-up read signs B's answer to that punch
(``peers.BindingCache``: on the gateway that read it and, carried in the push, on the one that
pushed to B; dropped with the ID's local entry, gone after 5 s): that read was made for that
answer. Signed ``IdPk`` s are cached by (id, key), which is a pure function of their inputs,
so they need no invalidation.
"""

from __future__ import annotations

from hubbub.contracts.rendezvous import KIND_KEY, KIND_MOVED, KIND_REMOVED, BindingChanged


__all__ = ["BindingChanged", "KIND_KEY", "KIND_MOVED", "KIND_REMOVED"]
