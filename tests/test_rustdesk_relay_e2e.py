"""The whole RustDesk connection through hubbub: ID server hint -> relay shard -> bytes."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from rustdesk_sim import Peer, TcpClient, close_all, msg, verify_signed
from support import Cluster, free_port, free_port_block, shard_env

from gateway.rendezvous.logic import split_host_port
from hubbub.wire.rustdesk.framing import encode_frame
from hubbub.wire.rustdesk.messages import pb


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_all()


def test_b_initiated_relay_through_the_advertised_shard(cluster: Cluster, tmp_path: Path) -> None:
    relay_port = free_port_block(3)
    env = shard_env(KEY="_", RELAY_PORT=str(relay_port))
    port = free_port_block(4) + 1
    cluster.start("shard", env=env)
    cluster.start("gateway", "-p", str(port), "--spaces-port", str(free_port()),
                  env=env | {"ALWAYS_USE_RELAY": "Y"})
    pub = (tmp_path / "data" / "id_ed25519.pub").read_text()
    b = Peer("127.0.0.1", port, "relayed" + uuidlib.uuid4().hex[:6], src_ip="127.0.0.2")
    b.register()
    relay = ""
    deadline = time.monotonic() + 8
    while not relay and time.monotonic() < deadline:  # the shard's presence shows up
        a = TcpClient("127.0.0.1", port)
        a.send(msg(punch_hole_request=pb.PunchHoleRequest(id=b.id, licence_key=pub,
                                                          version="1.4.9")))
        ph = b.recv_udp(("punch_hole",))
        assert ph is not None and ph.punch_hole.nat_type == pb.SYMMETRIC
        relay = ph.punch_hole.relay_server
        if not relay:
            a.close()
            time.sleep(0.5)
    assert relay == f"127.0.0.1:{relay_port}" and ph is not None
    # B (told to relay) answers with a RelayResponse, then dials the relay.
    uuid = str(uuidlib.uuid4())
    t = TcpClient("127.0.0.1", port, src_ip="127.0.0.2")
    t.send(msg(relay_response=pb.RelayResponse(socket_addr=ph.punch_hole.socket_addr, uuid=uuid,
                                               relay_server=relay, id=b.id, version="1.4.9")))
    host, rport = split_host_port(relay, 21117)
    b_half = TcpClient(host, rport, src_ip="127.0.0.2")
    b_half.send(msg(request_relay=pb.RequestRelay(licence_key=pub, uuid=uuid)))
    r = a.recv()
    assert r is not None and r.WhichOneof("union") == "relay_response"
    assert verify_signed(pub, r.relay_response.pk) == (b.id, b.pk)
    assert r.relay_response.relay_server == relay and r.relay_response.uuid == uuid
    a_half = TcpClient(host, rport)
    a_half.send(msg(request_relay=pb.RequestRelay(licence_key=pub, uuid=uuid, id=b.id)))
    a_half.send_raw(encode_frame(b"hello from A"))
    assert b_half.recv_frame(5.0) == b"hello from A"
    b_half.send_raw(encode_frame(b"hello from B"))
    assert a_half.recv_frame(5.0) == b"hello from B"
