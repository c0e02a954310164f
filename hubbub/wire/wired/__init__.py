"""Wired spaces host protocol 0.3.0, sans-I/O: inbound validation, outbound builders, records."""
