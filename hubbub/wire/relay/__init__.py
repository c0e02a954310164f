"""Sans-I/O rules of the RustDesk relay (hbbr): first message, re-framing, pairing, bandwidth."""
