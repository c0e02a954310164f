"""The shard's WebRTC SFU: mediasoup-compatible transports muxed on one UDP port."""
