"""RustDesk wire code: protobuf schema, BytesCodec framing, AddrMangle, NaCl helpers.

Everything here is sans-I/O: bytes in, values or bytes out; callers own sockets and clocks.
"""
