"""Sessions, spaces and who consumes whom: the Wired WebRTC subjects on one shard.

A session is one client socket (cluster-wide id chosen by its gateway). Players in a common
space consume each other's audio producer and data producers, exactly once per pair (the
original host could consume twice or consume itself), and stop when they no longer share a
space (the original kept the leaver's consumers open). ``call`` is synchronous: state changes
of one request happen without interleaving, so no locks are needed. Messages for the calling
socket come back as the reply; messages for other sockets are collected in ``pushes``.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from hubbub.contracts.media import MediaCall
from hubbub.errors import RemoteProtocolError
from hubbub.wire.webrtc.ice import IceState
from hubbub.wire.webrtc.params import (
    ParamsError,
    SubscriberCaps,
    consumer_rtp_parameters,
    data_consumer_parameters,
    parse_data_producer,
    parse_producer,
    random_token,
    router_rtp_capabilities,
    subscriber_caps,
    transport_options,
)
from hubbub.wire.webrtc.rtp import OutboundStream
from shards.media import metrics
from shards.media.metrics import Counts
from shards.media.mux import UdpMux
from shards.media.stack import Certificate, certificate_fingerprints
from shards.media.transport import Consumer, DataConsumer, DataProducer, Producer, Transport


__all__ = ["MediaError", "MediaRouter", "Session"]

Message = list[Any]
"""``[subject, data]`` for one Wired message."""

MAX_SESSIONS = 4096
MAX_SPACES_PER_SESSION = 32
MAX_DATA_PRODUCERS = 4
MAX_ID = 128
MAX_URI = 4096
IDLE_SESSION = 120.0
"""Seconds without calls after which a session whose transports are all dead is dropped."""
OPS = frozenset({
    "get_router_rtp_capabilities", "create_transport", "connect_transport",
    "set_rtp_capabilities", "produce", "produce_data", "resume_audio", "join", "leave", "close",
})


class MediaError(RemoteProtocolError):
    """A media.call the shard refuses (answered as RemoteError to the gateway)."""

    code = "media"


@dataclass(eq=False)
class Session:
    id: str
    gateway: str
    spaces: dict[str, int] = field(default_factory=dict)
    caps: SubscriberCaps | None = None
    send: Transport | None = None
    recv: Transport | None = None
    producer: Producer | None = None
    data_producers: list[DataProducer] = field(default_factory=list)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    """By producer id."""
    data_consumers: dict[str, DataConsumer] = field(default_factory=dict)
    """By data producer id."""
    last_call: float = 0.0


class MediaRouter:
    """All media state of one shard.

    Args:
        mux: the shard's UDP mux (transports register on it).
        certificate: the shard's DTLS certificate.
        counts: hot-path counters.
        announced_ip: address put in ICE candidates.
        tcp_port: ICE-TCP port advertised (0: none).
    """

    def __init__(self, mux: UdpMux, certificate: Certificate, counts: Counts,
                 announced_ip: str, tcp_port: int = 0, max_speakers: int = 0) -> None:
        self.mux = mux
        self.max_speakers = max_speakers
        self.certificate = certificate
        self.counts = counts
        self.announced_ip = announced_ip
        self.tcp_port = tcp_port
        self.fingerprints = certificate_fingerprints(certificate)
        # mediasoup-client puts the last fingerprint in its SDP: keep sha-256 last.
        self.fingerprints.sort(key=lambda f: f[0] == "sha-256")
        self.sessions: dict[str, Session] = {}
        self.spaces: dict[str, set[str]] = {}
        self.transports: dict[str, Transport] = {}
        self.pushes: dict[str, tuple[str, list[Message]]] = {}
        self._caller: Session | None = None
        self._reply: list[Message] = []
        self._rng = random.Random()

    # -------------------------------------------------------------- entry
    def call(self, req: MediaCall, now: float | None = None) -> list[Message]:
        """Run one ``media.call``; returns the messages for the calling socket.

        Raises:
            MediaError: unusable session or gateway id, or unknown op.
            ParamsError: the client's parameters are unusable.
        """
        sid, gw, op = req.session, req.gateway, req.op
        if not 0 < len(sid) <= MAX_ID or len(gw) > 256:
            raise MediaError("session id of 1 to 128 characters, gateway id up to 256")
        if op not in OPS:
            raise MediaError(f"unknown op {op!r}")
        data = req.data
        if op == "get_router_rtp_capabilities":
            return [["router_rtp_capabilities", router_rtp_capabilities()]]
        if op == "close":
            self.close_session(sid)
            return []
        session = self.sessions.get(sid)
        if session is None:
            if len(self.sessions) >= MAX_SESSIONS:
                raise MediaError("media shard is full")
            session = Session(sid, gw)
            self.sessions[sid] = session
        session.gateway = gw
        session.last_call = time.monotonic() if now is None else now
        self._caller, self._reply = session, []
        try:
            self._sync_spaces(session, req.spaces, op, data)
            handler = getattr(self, "_op_" + str(op))
            handler(session, data)
            return self._reply
        finally:
            self._caller = None

    def take_pushes(self) -> list[tuple[str, str, list[Message]]]:
        """Messages for other sockets produced since the last call: (gateway, session, msgs)."""
        out = [(gw, sid, msgs) for sid, (gw, msgs) in self.pushes.items() if msgs]
        self.pushes = {}
        return out

    def _emit(self, session: Session, msg: Message) -> None:
        if session is self._caller:
            self._reply.append(msg)
        else:
            self.pushes.setdefault(session.id, (session.gateway, []))[1].append(msg)

    # ------------------------------------------------------------- spaces
    def _sync_spaces(self, s: Session, spaces: Any, op: str, data: Any) -> None:
        want = dict(s.spaces)
        if isinstance(spaces, dict):
            want = {}
            for uri, pid in list(spaces.items())[:MAX_SPACES_PER_SESSION]:
                if isinstance(uri, str) and len(uri) <= MAX_URI and isinstance(pid, int) \
                        and 0 <= pid <= 255:
                    want[uri] = pid
        if op == "join" and isinstance(data, dict) and isinstance(data.get("uri"), str) \
                and len(data["uri"]) <= MAX_URI and isinstance(data.get("playerId"), int) \
                and len(want) < MAX_SPACES_PER_SESSION:
            want[data["uri"]] = int(data["playerId"])
        if op == "leave" and isinstance(data, dict):
            want.pop(str(data.get("uri")), None)
        if want == s.spaces:
            return
        left = [u for u in s.spaces if u not in want]
        for uri in left:
            self._remove_member(uri, s.id)
        s.spaces = want
        for uri in want:
            self.spaces.setdefault(uri, set()).add(s.id)
        if left:
            self._prune(s)
        self._refresh(s)

    def _remove_member(self, uri: str, sid: str) -> None:
        members = self.spaces.get(uri)
        if members is not None:
            members.discard(sid)
            if not members:
                del self.spaces[uri]

    def _shared(self, a: Session, b: Session) -> str | None:
        for uri in a.spaces:
            if uri in b.spaces:
                return uri
        return None

    def _peers(self, s: Session) -> list[Session]:
        seen: dict[str, Session] = {}
        for uri in s.spaces:
            for sid in self.spaces.get(uri, ()):
                other = self.sessions.get(sid)
                if other is not None and other is not s:
                    seen[sid] = other
        return list(seen.values())

    def _refresh(self, s: Session) -> None:
        """Create every missing consumer between ``s`` and the players it shares a space with."""
        for other in self._peers(s):
            self._link(s, other)
            self._link(other, s)

    def _link(self, sub: Session, pub: Session) -> None:
        """Let ``sub`` consume what ``pub`` produces (if it can and does not already)."""
        if sub.recv is None or sub.caps is None or sub is pub:
            return
        uri = self._shared(sub, pub)
        if uri is None:
            return
        player = pub.spaces[uri]
        p = pub.producer
        if p is not None and p.id not in sub.consumers:
            ssrc = self._rng.getrandbits(32) or 1
            c = Consumer(random_token(20), sub.id, p, sub.recv,
                         OutboundStream(ssrc, sub.caps.opus_pt, sub.caps.audio_level_id))
            rtp = consumer_rtp_parameters(sub.caps, p.spec, ssrc, sub.recv.new_mid(),
                                          p.spec.cname)
            p.consumers.append(c)
            sub.recv.consumers.append(c)
            sub.consumers[p.id] = c
            self._emit(sub, ["create_consumer", {"playerId": player, "consumerId": c.id,
                                                 "producerId": p.id, "rtpParameters": rtp}])
        for dp in pub.data_producers:
            if dp.id in sub.data_consumers:
                continue
            stream = sub.recv.allocate_stream()
            if stream is None:
                break
            dc = DataConsumer(random_token(20), sub.id, dp, sub.recv, stream)
            dp.consumers.append(dc)
            sub.recv.data_consumers.append(dc)
            sub.data_consumers[dp.id] = dc
            self._emit(sub, ["create_data_consumer", {
                "playerId": player, "consumerId": dc.id, "dataProducerId": dp.id,
                "sctpStreamParameters": data_consumer_parameters(dp.spec, stream)}])

    def _prune(self, s: Session) -> None:
        """Close consumers between ``s`` and players it no longer shares a space with."""
        for pid, c in list(s.consumers.items()):
            pub = self.sessions.get(c.producer.session_id)
            if pub is None or self._shared(s, pub) is None:
                c.close()
                del s.consumers[pid]
        for dpid, dc in list(s.data_consumers.items()):
            pub = self.sessions.get(dc.data_producer.session_id)
            if pub is None or self._shared(s, pub) is None:
                dc.close()
                del s.data_consumers[dpid]
        for other in list(self.sessions.values()):
            if other is s or self._shared(s, other) is not None:
                continue
            for pid, c in list(other.consumers.items()):
                if c.producer.session_id == s.id:
                    c.close()
                    del other.consumers[pid]
            for dpid, dc in list(other.data_consumers.items()):
                if dc.data_producer.session_id == s.id:
                    dc.close()
                    del other.data_consumers[dpid]

    # ----------------------------------------------------------------- ops
    def _op_join(self, s: Session, data: Any) -> None:
        pass  # membership was applied by _sync_spaces

    def _op_leave(self, s: Session, data: Any) -> None:
        pass

    def _op_create_transport(self, s: Session, data: Any) -> None:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("producer", "consumer"):
            raise ParamsError("create_transport type must be producer or consumer")
        old = s.send if kind == "producer" else s.recv
        if old is not None:
            self._close_transport(s, old)
        t = Transport(random_token(24), str(kind), s.id, self.mux, self.certificate,
                      self.counts)
        self.transports[t.id] = t
        if kind == "producer":
            s.send = t
        else:
            s.recv = t
        options = transport_options(t.id, t.ice.ufrag, t.ice.password, self.announced_ip,
                                    self.mux.port, self.tcp_port, self.fingerprints)
        self._emit(s, ["transport_created", {"type": kind, "options": options}])
        if kind == "consumer":
            self._refresh(s)

    def _op_connect_transport(self, s: Session, data: Any) -> None:
        if not isinstance(data, dict):
            raise ParamsError("connect_transport needs {type, dtlsParameters}")
        t = s.send if data.get("type") == "producer" else \
            s.recv if data.get("type") == "consumer" else None
        if t is None:
            raise ParamsError("no such transport")
        t.connect(data.get("dtlsParameters"))

    def _op_set_rtp_capabilities(self, s: Session, data: Any) -> None:
        s.caps = subscriber_caps(data)
        if s.caps is None:
            raise ParamsError("the client cannot receive audio/opus")
        self._refresh(s)

    def _op_produce(self, s: Session, data: Any) -> None:
        if s.send is None:
            raise ParamsError("create a producer transport first")
        rtp = data.get("rtpParameters", data) if isinstance(data, dict) else data
        spec = parse_producer(rtp)
        if s.producer is not None:
            self._close_producer(s.producer)
        p = Producer(random_token(20), s.id, s.send, spec, self.counts)
        s.send.add_producer(p)
        s.producer = p
        self._emit(s, ["producer_id", p.id])
        self._refresh(s)

    def _op_produce_data(self, s: Session, data: Any) -> None:
        if s.send is None:
            raise ParamsError("create a producer transport first")
        spec = parse_data_producer(data)
        old = s.send.data_producers.get(spec.stream_id)
        if old is not None:
            self._close_data_producer(s, old)
        if len(s.data_producers) >= MAX_DATA_PRODUCERS:
            raise ParamsError("too many data producers")
        dp = DataProducer(random_token(20), s.id, s.send, spec)
        s.send.data_producers[spec.stream_id] = dp
        s.data_producers.append(dp)
        self._emit(s, ["data_producer_id", dp.id])
        self._refresh(s)

    def _op_resume_audio(self, s: Session, data: Any) -> None:
        for c in s.consumers.values():
            c.paused = False

    # --------------------------------------------------------------- close
    def _close_producer(self, p: Producer) -> None:
        for c in list(p.consumers):
            sub = self.sessions.get(c.session_id)
            if sub is not None and sub.consumers.get(p.id) is c:
                del sub.consumers[p.id]
        p.close()

    def _close_data_producer(self, s: Session, dp: DataProducer) -> None:
        for dc in list(dp.consumers):
            sub = self.sessions.get(dc.session_id)
            if sub is not None and sub.data_consumers.get(dp.id) is dc:
                del sub.data_consumers[dp.id]
        dp.close()
        with contextlib.suppress(ValueError):
            s.data_producers.remove(dp)

    def _close_transport(self, s: Session, t: Transport) -> None:
        if s.producer is not None and s.producer.transport is t:
            self._close_producer(s.producer)
            s.producer = None
        for dp in list(s.data_producers):
            if dp.transport is t:
                self._close_data_producer(s, dp)
        for pid, c in list(s.consumers.items()):
            if c.transport is t:
                c.close()
                del s.consumers[pid]
        for dpid, dc in list(s.data_consumers.items()):
            if dc.transport is t:
                dc.close()
                del s.data_consumers[dpid]
        t.close()
        self.transports.pop(t.id, None)
        if s.send is t:
            s.send = None
        if s.recv is t:
            s.recv = None

    def close_session(self, sid: str) -> Session | None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return None
        for t in (s.send, s.recv):
            if t is not None:
                self._close_transport(s, t)
        for uri in s.spaces:
            self._remove_member(uri, sid)
        self.pushes.pop(sid, None)
        return s

    def reap_idle(self, now: float, idle: float = IDLE_SESSION) -> list[Session]:
        """Close sessions without a call for ``idle`` seconds and without a live ICE path.

        A socket's gateway normally sends ``close``; this catches sessions whose ``close`` was
        lost (their client is gone, so their transports stopped answering consent checks).
        """
        reaped = []
        for s in list(self.sessions.values()):
            if now - s.last_call < idle:
                continue
            alive = [t for t in (s.send, s.recv)
                     if t is not None and t.ice.state is IceState.CONNECTED]
            if not alive:
                self.close_session(s.id)
                reaped.append(s)
        return reaped

    def select_speakers(self) -> None:
        """Forward only the ``max_speakers`` loudest voices of each space (0: all).

        Loudness comes from the publishers' ``ssrc-audio-level``; a producer that sent
        nothing since the last selection counts as silent. A producer in several spaces is
        forwarded if it is among the loudest of any of them.
        """
        k = self.max_speakers
        producers = [s.producer for s in self.sessions.values() if s.producer is not None]
        for p in producers:
            if not p.heard:
                p.loudness = 0.0
            p.heard = 0
        if not k:
            return
        active: set[str] = set()
        for members in self.spaces.values():
            voices: list[Producer] = []
            for sid in members:
                voice = self._producer_of(sid)
                if voice is not None:
                    voices.append(voice)
            voices.sort(key=lambda v: v.loudness, reverse=True)
            active.update(v.id for v in voices[:k])
        for p in producers:
            p.active = p.id in active

    def _producer_of(self, sid: str) -> Producer | None:
        s = self.sessions.get(sid)
        return s.producer if s is not None else None

    def update_gauges(self) -> None:
        metrics.SESSIONS.set(len(self.sessions))
        metrics.SPACES.set(len(self.spaces))
        metrics.TRANSPORTS.set(len(self.transports))
        producers = consumers = dps = dcs = 0
        for s in self.sessions.values():
            producers += s.producer is not None
            consumers += len(s.consumers)
            dps += len(s.data_producers)
            dcs += len(s.data_consumers)
        metrics.PRODUCERS.set(producers)
        metrics.CONSUMERS.set(consumers)
        metrics.DATA_PRODUCERS.set(dps)
        metrics.DATA_CONSUMERS.set(dcs)
