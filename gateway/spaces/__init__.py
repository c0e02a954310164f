"""The Wired spaces host in the gateway: signalling, membership and fan-out, media shard client."""
