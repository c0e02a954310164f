"""Sans-I/O pieces of the WebRTC media plane: STUN/ICE-lite, RTP/RTCP, mediasoup parameters."""
