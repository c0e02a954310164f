"""The Redis control plane: presence, inboxes, request/reply, shard slot leases."""

from registry.client import Handler, ProcessRecord, Registry
from registry.leases import SlotLease


__all__ = ["Handler", "ProcessRecord", "Registry", "SlotLease"]
