"""The Redis control plane: presence, inboxes, request/reply, shard slot leases."""

from registry.client import DurableScript, ProcessRecord, Registry, TypedHandler
from registry.leases import SlotLease
from registry.target import RedisTarget


__all__ = ["DurableScript", "ProcessRecord", "RedisTarget", "Registry", "SlotLease",
           "TypedHandler"]
