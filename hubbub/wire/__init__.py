"""Sans-I/O wire protocol code shared by gateways and shards (no asyncio, no sockets)."""
