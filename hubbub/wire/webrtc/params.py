"""mediasoup-shaped parameter objects: what mediasoup-client expects and sends.

Router capabilities (Opus 48000/2 only), ``transport_created.options``, validation of the client's
``produce`` RtpParameters and ``produce_data`` SctpStreamParameters, and the ``rtpParameters`` /
``sctpStreamParameters`` of consumers. Everything here is plain dicts in and out (the JSON the
Wired messages carry); invalid input raises ``ParamsError`` with a message fit for the client.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

from hubbub.errors import RemoteProtocolError


__all__ = [
    "AUDIO_LEVEL_URI",
    "MID_URI",
    "OPUS_PT",
    "SCTP_MAX_MESSAGE_SIZE",
    "SCTP_PORT",
    "SCTP_STREAMS",
    "DataProducerSpec",
    "ParamsError",
    "ProducerSpec",
    "consumer_rtp_parameters",
    "data_consumer_parameters",
    "parse_data_producer",
    "parse_producer",
    "random_token",
    "router_rtp_capabilities",
    "subscriber_caps",
    "transport_options",
]

OPUS_PT = 100
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
AUDIO_LEVEL_ID = 10
SCTP_PORT = 5000
SCTP_STREAMS = 1024
SCTP_MAX_MESSAGE_SIZE = 262144
MAX_LABEL = 256
_ALNUM = string.ascii_letters + string.digits


class ParamsError(RemoteProtocolError):
    """The client's parameters are unusable (answered as an ``error`` message)."""

    code = "bad_params"


def random_token(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def router_rtp_capabilities() -> dict[str, Any]:
    """RtpCapabilities of every shard's router: Opus 48000/2 with in-band FEC."""
    return {
        "codecs": [{
            "kind": "audio",
            "mimeType": "audio/opus",
            "preferredPayloadType": OPUS_PT,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"useinbandfec": 1},
            "rtcpFeedback": [],
        }],
        "headerExtensions": [
            {"kind": "audio", "uri": MID_URI, "preferredId": 1, "preferredEncrypt": False,
             "direction": "sendrecv"},
            {"kind": "audio", "uri": AUDIO_LEVEL_URI, "preferredId": AUDIO_LEVEL_ID,
             "preferredEncrypt": False, "direction": "sendrecv"},
        ],
    }


def transport_options(transport_id: str, ufrag: str, password: str, ip: str, udp_port: int,
                      tcp_port: int, fingerprints: list[tuple[str, str]]) -> dict[str, Any]:
    """``transport_created.options`` as mediasoup's WebRtcTransport shapes them (ICE-lite)."""
    candidates: list[dict[str, Any]] = [{
        "foundation": "udpcandidate", "priority": 1076302079, "address": ip, "ip": ip,
        "protocol": "udp", "port": udp_port, "type": "host",
    }]
    if tcp_port:
        candidates.append({
            "foundation": "tcpcandidate", "priority": 1076276479, "address": ip, "ip": ip,
            "protocol": "tcp", "port": tcp_port, "type": "host", "tcpType": "passive",
        })
    return {
        "id": transport_id,
        "iceParameters": {"usernameFragment": ufrag, "password": password, "iceLite": True},
        "iceCandidates": candidates,
        "dtlsParameters": {
            "role": "auto",
            "fingerprints": [{"algorithm": a, "value": v} for a, v in fingerprints],
        },
        "sctpParameters": {
            "port": SCTP_PORT, "OS": SCTP_STREAMS, "MIS": SCTP_STREAMS,
            "maxMessageSize": SCTP_MAX_MESSAGE_SIZE,
            "maxSendMessageSize": SCTP_MAX_MESSAGE_SIZE,
            "maxReceiveMessageSize": SCTP_MAX_MESSAGE_SIZE,
        },
    }


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParamsError(f"invalid {what}")
    return value


def _plain_params(value: Any) -> dict[str, str | int | float]:
    """Codec parameters restricted to scalar values (bounded)."""
    out: dict[str, str | int | float] = {}
    if isinstance(value, dict):
        for k, v in list(value.items())[:16]:
            if isinstance(k, str) and len(k) <= 64 and isinstance(v, str | int | float) \
                    and not isinstance(v, bool) and len(str(v)) <= 256:
                out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class ProducerSpec:
    """What the forwarder needs from a ``produce`` RtpParameters."""

    ssrc: int | None
    payload_type: int
    audio_level_id: int
    cname: str
    codec_parameters: dict[str, str | int | float]


def parse_producer(rtp: Any) -> ProducerSpec:
    """Validate the RtpParameters of ``produce`` (kind is always audio).

    Raises:
        ParamsError: no Opus codec, bad payload type, SSRC or extension ids.
    """
    if not isinstance(rtp, dict):
        raise ParamsError("rtpParameters must be an object")
    codecs = rtp.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        raise ParamsError("rtpParameters.codecs is empty")
    codec = codecs[0]
    if not isinstance(codec, dict) or str(codec.get("mimeType", "")).lower() != "audio/opus":
        raise ParamsError("only audio/opus can be produced")
    pt = _int(codec.get("payloadType"), 0, 127, "payloadType")
    ssrc: int | None = None
    encodings = rtp.get("encodings")
    if isinstance(encodings, list) and encodings and isinstance(encodings[0], dict) \
            and encodings[0].get("ssrc") is not None:
        ssrc = _int(encodings[0]["ssrc"], 0, 0xFFFFFFFF, "encodings[0].ssrc")
    level = 0
    exts = rtp.get("headerExtensions")
    if isinstance(exts, list):
        for ext in exts[:32]:
            if isinstance(ext, dict) and ext.get("uri") == AUDIO_LEVEL_URI:
                level = _int(ext.get("id"), 1, 255, "headerExtensions id")
    cname = ""
    rtcp = rtp.get("rtcp")
    if isinstance(rtcp, dict) and isinstance(rtcp.get("cname"), str):
        cname = rtcp["cname"][:64]
    return ProducerSpec(ssrc, pt, level, cname or random_token(16),
                        _plain_params(codec.get("parameters")))


@dataclass(frozen=True, slots=True)
class SubscriberCaps:
    """The parts of a client's RtpCapabilities that consumers use."""

    opus_pt: int
    audio_level_id: int


def subscriber_caps(caps: Any) -> SubscriberCaps | None:
    """Read ``set_rtp_capabilities``; None when the client cannot receive Opus.

    Raises:
        ParamsError: not an object.
    """
    if not isinstance(caps, dict):
        raise ParamsError("rtpCapabilities must be an object")
    pt = -1
    codecs = caps.get("codecs")
    for c in codecs[:64] if isinstance(codecs, list) else []:
        if isinstance(c, dict) and str(c.get("mimeType", "")).lower() == "audio/opus" \
                and c.get("clockRate") == 48000:
            pref = c.get("preferredPayloadType", OPUS_PT)
            pt = pref if isinstance(pref, int) and 0 <= pref <= 127 else OPUS_PT
            break
    if pt < 0:
        return None
    level = 0
    exts = caps.get("headerExtensions")
    for e in exts[:64] if isinstance(exts, list) else []:
        if isinstance(e, dict) and e.get("uri") == AUDIO_LEVEL_URI \
                and e.get("kind", "audio") == "audio":
            pid = e.get("preferredId")
            if isinstance(pid, int) and 1 <= pid <= 14:
                level = pid
    return SubscriberCaps(pt, level)


def consumer_rtp_parameters(caps: SubscriberCaps, producer: ProducerSpec, ssrc: int,
                            mid: str, cname: str) -> dict[str, Any]:
    """``create_consumer.rtpParameters`` for one subscriber of one producer."""
    params = {"useinbandfec": 1, **producer.codec_parameters}
    exts: list[dict[str, Any]] = []
    if caps.audio_level_id:
        exts.append({"uri": AUDIO_LEVEL_URI, "id": caps.audio_level_id, "encrypt": False,
                     "parameters": {}})
    return {
        "mid": mid,
        "codecs": [{"mimeType": "audio/opus", "payloadType": caps.opus_pt, "clockRate": 48000,
                    "channels": 2, "parameters": params, "rtcpFeedback": []}],
        "headerExtensions": exts,
        "encodings": [{"ssrc": ssrc}],
        "rtcp": {"cname": cname, "reducedSize": True, "mux": True},
    }


@dataclass(frozen=True, slots=True)
class DataProducerSpec:
    stream_id: int
    ordered: bool
    max_retransmits: int | None
    max_packet_life_time: int | None
    label: str
    protocol: str


def parse_data_producer(sctp: Any) -> DataProducerSpec:
    """Validate ``produce_data`` SctpStreamParameters (``streamId`` is required).

    Raises:
        ParamsError: missing or out-of-range fields.
    """
    if not isinstance(sctp, dict):
        raise ParamsError("sctpStreamParameters must be an object")
    if sctp.get("streamId") is None:
        raise ParamsError("sctpStreamParameters.streamId is required")
    sid = _int(sctp.get("streamId"), 0, SCTP_STREAMS - 1, "streamId")
    rtx = sctp.get("maxRetransmits")
    life = sctp.get("maxPacketLifeTime")
    rtx_v = None if rtx is None else _int(rtx, 0, 65535, "maxRetransmits")
    life_v = None if life is None else _int(life, 0, 65535, "maxPacketLifeTime")
    if rtx_v is not None and life_v is not None:
        raise ParamsError("maxRetransmits and maxPacketLifeTime are exclusive")
    ordered = sctp.get("ordered")
    if ordered is None:
        ordered = rtx_v is None and life_v is None
    label = sctp.get("label") if isinstance(sctp.get("label"), str) else ""
    proto = sctp.get("protocol") if isinstance(sctp.get("protocol"), str) else ""
    return DataProducerSpec(sid, bool(ordered), rtx_v, life_v, str(label)[:MAX_LABEL],
                            str(proto)[:MAX_LABEL])


def data_consumer_parameters(spec: DataProducerSpec, stream_id: int) -> dict[str, Any]:
    """``create_data_consumer.sctpStreamParameters`` on the subscriber's stream ``stream_id``."""
    out: dict[str, Any] = {"streamId": stream_id, "ordered": spec.ordered}
    if spec.max_retransmits is not None:
        out["maxRetransmits"] = spec.max_retransmits
    if spec.max_packet_life_time is not None:
        out["maxPacketLifeTime"] = spec.max_packet_life_time
    if spec.label:
        out["label"] = spec.label
    if spec.protocol:
        out["protocol"] = spec.protocol
    return out
