"""Two simulated hosts (network namespaces), one gateway each, behave as one ID server."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from rustdesk_sim import Peer, TcpClient, close_all, mangled, msg, verify_signed
from support import Cluster, free_port, free_port_block, new_prefix, redis_server

from hubbub.wire.rustdesk import addr as addrmangle
from hubbub.wire.rustdesk.messages import pb


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns"),
]


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


def test_punch_and_relay_across_hosts(tmp_path: Path) -> None:
    with netns.hosts(2) as (root, (ha, hb)), redis_server(bind=f"127.0.0.1 {root}") as srv:
        c = Cluster(f"redis://{root}:{srv.port}/0", new_prefix(), tmp_path)
        try:
            port = free_port_block(4) + 1
            for h in (ha, hb):
                c.start("gateway", "-p", str(port), "--spaces-port", str(free_port()),
                        "-k", "_", host=h)
            pub = (tmp_path / "data" / "id_ed25519.pub").read_text()
            b = Peer(ha.addr, port, "host" + uuidlib.uuid4().hex[:8], src_ip=root)
            b.register()
            # A asks host B's gateway; B is registered with host A's.
            a = TcpClient(hb.addr, port, src_ip=root)
            a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, licence_key=pub,
                                                              version="1.4.9")))
            fl = b.recv_udp(("fetch_local_addr",))  # same public IP: the LAN path
            assert fl is not None and b.last_src == (ha.addr, port)
            assert mangled(fl.fetch_local_addr.socket_addr) == a.local
            t = TcpClient(ha.addr, port, src_ip=root)
            t.send(msg(local_addr=pb.LocalAddr(
                socket_addr=fl.fetch_local_addr.socket_addr,
                local_addr=addrmangle.encode("192.168.7.7", 21118), id=b.id, version="1.4.9")))
            r = a.recv()
            assert r is not None and r.punch_hole_response.is_local
            assert verify_signed(pub, r.punch_hole_response.pk) == (b.id, b.pk)
            # A-initiated relay through host B's gateway reaches B from host A's socket.
            a2 = TcpClient(hb.addr, port, src_ip=root)
            relay_uuid = str(uuidlib.uuid4())
            a2.send(msg(request_relay=pb.RequestRelay(id=b.id, uuid=relay_uuid)))
            rq = b.recv_udp(("request_relay",))
            assert rq is not None and rq.request_relay.uuid == relay_uuid
            assert b.last_src == (ha.addr, port)
            # Online status is the same from either host.
            q = TcpClient(hb.addr, port - 1, src_ip=root)
            q.send(msg(online_request=pb.OnlineRequest(id="x", peers=[b.id, "nobody"])))
            r = q.recv()
            assert r is not None and r.online_response.states == b"\x80"
        finally:
            c.stop_all()
