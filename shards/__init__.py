"""Shard role: one per core; RustDesk relay pairs and WebRTC media on its slice of ports."""
