"""Connection set-up flows: punch and relay requests from A, answers from B, routing.

A mixin of ``RendezvousService`` (kept apart to keep modules small): pushes to B leave from the
socket B registered to, possibly through another gateway's inbox (``rd.push``); B's answers go
to the gateway holding A's connection (``rd.deliver``, found through ``rd:sink:<addr>``).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.rendezvous import metrics
from gateway.rendezvous.conns import Conn
from gateway.rendezvous.logic import Network, is_lan, plan_punch, valid_register_id
from gateway.rendezvous.store import MODE_UDP, Live, Store
from hubbub.config import Config
from hubbub.errors import RegistryUnavailable
from hubbub.keys import ServerKey
from hubbub.limits import BoundedMap
from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.crypto import sign_id_pk
from hubbub.wire.rustdesk.messages import message, pb
from registry import ProcessRecord, Registry


if TYPE_CHECKING:
    from gateway.rendezvous.service import LocalPeer

__all__ = ["PunchFlows"]


def _punch_failure(failure: int, text: str = "") -> bytes:
    return message(punch_hole_response=pb.PunchHoleResponse(
        failure=failure, other_failure=text))  # type: ignore[arg-type]


class PunchFlows:
    """Punch/relay handling; the attributes below are provided by ``RendezvousService``."""

    cfg: Config
    registry: Registry
    store: Store
    key: ServerKey
    network: Network | None
    always_relay: bool
    udp_port: int
    peers: BoundedMap[str, LocalPeer]
    sinks: dict[str, Conn]
    streams: dict[str, Conn]
    signed: BoundedMap[str, bytes]
    punch_log: deque[str]
    punch_seen: BoundedMap[str, bool]
    sink_hints: BoundedMap[str, str]
    token: str

    async def resolve(self, token: str) -> ProcessRecord | None:
        raise NotImplementedError

    def relay_server(self) -> str:
        raise NotImplementedError

    def _send_udp(self, data: bytes, raw_addr: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _udp_target(self, ip: str, port: int) -> tuple[Any, ...]:
        raise NotImplementedError

    def drop_local(self, peer_id: str, keep: bytes | None = None) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- flows
    def _add_sink(self, conn: Conn) -> bool:
        """Hold A's connection for B's answer; True when Redis must learn about it."""
        if self.sinks.get(conn.addr_key) is conn:
            return False
        self.sinks[conn.addr_key] = conn
        conn.sink = True
        return True

    async def _target(self, peer_id: str, sink: str | None) -> tuple[bool, Live | None]:
        """(exists, freshest liveness) of B; also records A's sink in the same round trip.

        What this process heard of B counts only if it was heard under the binding this very
        read returns (bindings.py): a removed, moved or re-keyed ID is never served from here.
        """
        rec, live = await self.store.lookup(
            peer_id, None if sink is None else (sink, self.registry.id))
        self.drop_local(peer_id, None if rec is None else rec.gen)  # no-op when current
        if rec is None:
            return False, None
        local = self.peers.get(peer_id, time.time())
        if local is not None and (live is None or local.seen >= live.seen):
            live = Live(local.ip, local.port, local.seen, self.token, self.udp_port, local.mode)
        return True, live

    async def punch_request(self, conn: Conn, req: pb.PunchHoleRequest) -> None:
        first = self._add_sink(conn)
        if not self.key.licence_ok(req.licence_key):
            metrics.PUNCH_REQUESTS.labels("license_mismatch").inc()
            await conn.send_message(_punch_failure(pb.PunchHoleResponse.LICENSE_MISMATCH))
            return
        peer_id = req.id
        if not valid_register_id(peer_id):
            metrics.PUNCH_REQUESTS.labels("id_not_exist").inc()
            await conn.send_message(_punch_failure(pb.PunchHoleResponse.ID_NOT_EXIST))
            return
        try:
            exists, live = await self._target(peer_id, conn.addr_key if first else None)
        except RegistryUnavailable:
            local = self.peers.get(peer_id, time.time())
            if local is None:
                metrics.PUNCH_REQUESTS.labels("server_error").inc()
                await conn.send_message(_punch_failure(pb.PunchHoleResponse.OFFLINE,
                                                       "ID server storage unavailable"))
                return
            # Degraded mode: with the control plane away no binding can change, so a peer
            # heard here is still worth a punch.
            exists = True
            live = Live(local.ip, local.port, local.seen, self.token, self.udp_port, local.mode)
        now = time.time()
        if not exists and live is None:
            metrics.PUNCH_REQUESTS.labels("id_not_exist").inc()
            await conn.send_message(_punch_failure(pb.PunchHoleResponse.ID_NOT_EXIST))
            return
        if live is None or not live.online(now):
            metrics.PUNCH_REQUESTS.labels("offline").inc()
            await conn.send_message(_punch_failure(pb.PunchHoleResponse.OFFLINE))
            return
        a_ip, a_port = conn.addr
        self._log_punch(a_ip, peer_id, live.ip, now)
        plan = plan_punch(a_ip, live.ip, websocket=conn.websocket, always_relay=self.always_relay,
                          network=self.network, local_ip=self.cfg.local_ip,
                          relay_server=self.relay_server())
        mangled = addrmangle.encode(a_ip, a_port, int(now * 1_000_000))
        if plan.fetch_local:
            out = message(fetch_local_addr=pb.FetchLocalAddr(
                socket_addr=mangled, relay_server=plan.relay_server,
                socket_addr_v6=req.socket_addr_v6))
            outcome = "fetch_local_addr"
        else:
            out = message(punch_hole=pb.PunchHole(
                socket_addr=mangled, relay_server=plan.relay_server,
                nat_type=pb.SYMMETRIC if plan.force_symmetric else req.nat_type,
                udp_port=req.udp_port, force_relay=req.force_relay, upnp_port=req.upnp_port,
                socket_addr_v6=req.socket_addr_v6))
            outcome = "punch_hole"
        if await self.push(peer_id, live, out, conn.addr_key):
            metrics.PUNCH_REQUESTS.labels(outcome).inc()
        else:
            metrics.PUNCH_REQUESTS.labels("unreachable").inc()
            await conn.send_message(_punch_failure(pb.PunchHoleResponse.OFFLINE))

    def _log_punch(self, a_ip: str, peer_id: str, b_ip: str, now: float) -> None:
        key = f"{a_ip}|{peer_id}"
        if self.punch_seen.get(key, now):
            return
        self.punch_seen.put(key, True, now)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self.punch_log.append(f"{stamp} {a_ip} -> {peer_id}@{b_ip}")

    async def request_relay(self, conn: Conn, msg: pb.RendezvousMessage) -> None:
        first = self._add_sink(conn)
        rr = msg.request_relay
        live = None
        if valid_register_id(rr.id):
            with contextlib.suppress(RegistryUnavailable):
                _exists, live = await self._target(rr.id, conn.addr_key if first else None)
        now = time.time()
        if live is None or not live.online(now):
            metrics.PUNCH_REQUESTS.labels("relay_offline").inc()
            await conn.send_message(message(relay_response=pb.RelayResponse(
                uuid=rr.uuid, refuse_reason="Remote desktop is offline")))
            return
        rr.socket_addr = addrmangle.encode(conn.addr[0], conn.addr[1], int(now * 1_000_000))
        if await self.push(rr.id, live, msg.SerializeToString(), conn.addr_key):
            metrics.PUNCH_REQUESTS.labels("request_relay").inc()
        else:
            metrics.PUNCH_REQUESTS.labels("unreachable").inc()

    async def push(self, peer_id: str, live: Live, data: bytes, sink: str = "") -> bool:
        """Send ``data`` to B from the socket its registrations reach (maybe via a sibling).

        ``sink`` is A's address: the process that pushes remembers who holds A, so B's answer
        reaching that process needs no Redis look-up.
        """
        if live.owner == self.token:
            return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
        rec = await self.resolve(live.owner)
        if rec is None:
            # The owner is gone (B moves to a live gateway with its next heartbeat). A sibling
            # on the same port usually shares its address, and a datagram from anywhere else
            # is merely dropped by B's NAT, so try rather than fail.
            if live.mode == MODE_UDP and live.local_port == self.udp_port:
                metrics.ROUTED.labels("orphan_push").inc()
                return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
            return False
        if (live.mode == MODE_UDP and rec.host == self.registry.host
                and live.local_port == self.udp_port):
            # Same host, same port: our socket has the very source address B knows.
            return await self._push_local(peer_id, live.mode, live.ip, live.port, data)
        payload = {"id": peer_id, "ip": live.ip, "port": live.port, "lp": live.local_port,
                   "mode": live.mode, "data": data, "a": sink, "holder": self.registry.id}
        try:
            async with self.store.gate:
                ok = await self.registry.send(rec.id, "rd.push", payload)
        except RegistryUnavailable:
            return False
        if ok:
            metrics.ROUTED.labels("push").inc()
        return ok

    async def _push_local(self, peer_id: str, mode: int, ip: str, port: int,
                          data: bytes) -> bool:
        if mode == MODE_UDP:
            self._send_udp(data, self._udp_target(ip, port))
            return True
        conn = self.streams.get(peer_id)
        if conn is None:
            return False
        await conn.send_message(data)
        return True

    async def _on_push(self, payload: Any, sender: str) -> None:
        if not isinstance(payload, dict):
            return
        data = payload.get("data")
        if not isinstance(data, bytes):
            return
        mode = payload.get("mode")
        if mode == MODE_UDP and payload.get("lp") != self.udp_port:
            return
        a_key, holder = payload.get("a"), payload.get("holder")
        if isinstance(a_key, str) and a_key and isinstance(holder, str):
            self.sink_hints.put(a_key, holder, time.time())
        await self._push_local(str(payload.get("id")), int(mode or 0), str(payload.get("ip")),
                               int(payload.get("port") or 0), data)

    async def deliver(self, a_key: str, data: bytes) -> bool:
        """Hand B's answer to A's held connection, wherever it is."""
        if await self._deliver_local(a_key, data):
            return True
        try:
            owner = self.sink_hints.pop(a_key)
            if owner is None:
                owner = await self.store.sink_owner(a_key)
            if owner is None or owner == self.registry.id:
                metrics.DROPPED.labels("no_sink").inc()
                return False
            async with self.store.gate:
                ok = await self.registry.send(owner, "rd.deliver", {"a": a_key, "data": data})
        except RegistryUnavailable:
            return False
        if ok:
            metrics.ROUTED.labels("deliver").inc()
        return ok

    async def _deliver_local(self, a_key: str, data: bytes) -> bool:
        """Send ``data`` on A's connection if this process holds it (it is then let go)."""
        conn = self.sinks.pop(a_key, None)
        if conn is None:
            return False
        conn.sink = False
        await conn.send_message(data)
        return True

    async def _on_deliver(self, payload: Any, sender: str) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), bytes):
            return
        if not await self._deliver_local(str(payload.get("a")), payload["data"]):
            metrics.DROPPED.labels("no_sink").inc()

    async def signed_pk(self, peer_id: str) -> bytes:
        """Server-signed IdPk of ``peer_id`` (empty when unsigned or unknown)."""
        if self.key.signing is None:
            return b""
        # The binding is read every time (answers are rare next to heartbeats): a key that was
        # just replaced through another gateway must not be vouched for from a local cache.
        try:
            rec = await self.store.peer(peer_id)
        except RegistryUnavailable:
            return b""
        if rec is None or not rec.pk:
            return b""
        now = time.time()
        cache_key = f"{peer_id}\0{rec.pk.hex()}"
        cached = self.signed.get(cache_key, now)
        if cached is not None:
            return cached
        signed = sign_id_pk(self.key.signing, peer_id, rec.pk)
        self.signed.put(cache_key, signed, now)
        return signed

    @staticmethod
    def _a_key(mangled: bytes) -> str | None:
        ip, port = addrmangle.decode(mangled)
        if port == 0 and ip in ("0.0.0.0", "::"):
            return None
        return f"{ip}:{port}"

    async def _hole_sent(self, ps: pb.PunchHoleSent, b_addr: tuple[str, int],
                         udp: bool) -> None:
        a_key = self._a_key(ps.socket_addr)
        if a_key is None:
            return
        # A UDP answer only ever reaches A's TCP/WS connection (never a datagram to an
        # address taken from a message body), and only while A is waiting.
        pk = await self.signed_pk(ps.id) if ps.version else b""
        resp = pb.PunchHoleResponse(
            socket_addr=addrmangle.encode(b_addr[0], b_addr[1], int(time.time() * 1_000_000)),
            pk=pk, relay_server=ps.relay_server, nat_type=ps.nat_type, upnp_port=ps.upnp_port,
            socket_addr_v6=ps.socket_addr_v6, is_udp=udp)
        await self.deliver(a_key, message(punch_hole_response=resp))

    async def _local_addr(self, la: pb.LocalAddr) -> None:
        a_key = self._a_key(la.socket_addr)
        if a_key is None:
            return
        pk = await self.signed_pk(la.id) if la.version else b""
        resp = pb.PunchHoleResponse(socket_addr=la.local_addr, pk=pk,
                                    relay_server=la.relay_server, is_local=True,
                                    socket_addr_v6=la.socket_addr_v6)
        await self.deliver(a_key, message(punch_hole_response=resp))

    async def _relay_response(self, msg: pb.RendezvousMessage) -> None:
        rr = msg.relay_response
        a_key = self._a_key(rr.socket_addr)
        if a_key is None:
            return
        a_ip = a_key.rsplit(":", 1)[0]
        rr.socket_addr = b""
        if rr.WhichOneof("union") == "id":
            peer_id = rr.id
            rr.pk = await self.signed_pk(peer_id) if rr.version else b""
        if rr.relay_server:
            if is_lan(a_ip, self.network) and self.cfg.local_ip:
                rr.relay_server = self.cfg.local_ip
            elif self.cfg.local_ip and rr.relay_server == self.cfg.local_ip:
                rr.relay_server = self.relay_server()
        await self.deliver(a_key, msg.SerializeToString())

