"""With ``BIND`` unset every listener of every process answers on IPv4 and IPv6 alike.

WebRTC media over UDP on both families is covered where a peer can complete ICE
(tests/test_media_flow.py).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from support import Cluster, free_port, free_port_block, shard_env

from hubbub.wire.rustdesk import rendezvous_pb2 as pb
from hubbub.wire.rustdesk.messages import message, parse


FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


def _http_status(host: str, port: int, path: str) -> int:
    name = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{name}:{port}{path}", timeout=3) as resp:
        status: int = resp.status
        return status


def _tcp_accepts(family: int, host: str, port: int) -> bool:
    with socket.socket(family) as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError:
            return False
    return True


def test_every_listener_serves_both_families(cluster: Cluster) -> None:
    rendezvous = free_port_block(4) + 1
    env = shard_env(1, 4, RENDEZVOUS_PORT=str(rendezvous), SPACES_PORT=str(free_port()),
                    CONSOLE_PORT=str(free_port()))
    unbound: dict[str, str | None] = {**env, "BIND": None}
    gateway = cluster.start("gateway", env=unbound)
    shard = cluster.start("shard", env=unbound)
    relay = int(env["RELAY_PORT"])
    res = cluster.hubbub("status", "--json")
    [shard_info] = [p for p in json.loads(res.stdout) if p["role"] == "shard"]
    tcp_ports = {"nat test": rendezvous - 1, "rendezvous": rendezvous,
                 "rendezvous ws": rendezvous + 2, "relay": relay, "relay ws": relay + 2,
                 "ice-tcp": int(shard_info["ports"]["webrtc_tcp"])}
    for family, host in FAMILIES:
        for proc in (gateway, shard):
            assert _http_status(host, proc.ops_port, "/healthz") == 200, (proc.role, host)
        assert _http_status(host, int(env["SPACES_PORT"]), "/healthz") == 200, host
        with pytest.raises(urllib.error.HTTPError) as denied:  # the console asks for a login
            _http_status(host, int(env["CONSOLE_PORT"]), "/api/me")
        denied.value.close()
        assert denied.value.code == 401, host
        for what, port in tcp_ports.items():
            assert _tcp_accepts(family, host, port), (what, host)
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.settimeout(3)
            udp.sendto(message(register_peer=pb.RegisterPeer(id="dualstack1", serial=0)),
                       (host, rendezvous))
            answer = parse(udp.recv(1024))
            assert answer is not None and answer.HasField("register_peer_response"), host
