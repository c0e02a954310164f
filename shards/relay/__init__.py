"""The RustDesk relay (hbbr replacement) that runs inside every shard process.

Every shard of a host binds the relay ports with ``SO_REUSEPORT``; the two halves of a relay meet
in the shard that claimed the uuid first, whichever shard the kernel handed each one to (see
``service`` and ``handoff``).
"""
