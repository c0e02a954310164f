"""ID-server pieces without sockets: secure-TCP stream, limiters, decisions, keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from gateway.rendezvous.limits import IpLimiter
from gateway.rendezvous.logic import (
    choose_relay_host,
    online_bitmap,
    parse_mask,
    plan_punch,
    valid_custom_id,
    valid_register_id,
)
from hubbub.errors import ConfigError, FrameTooLarge, RemoteProtocolError
from hubbub.keys import load_or_create, relay_licence, server_key
from hubbub.limits import BoundedMap, WindowLimit
from hubbub.net import ProxyList
from hubbub.wire.rustdesk.crypto import (
    ServerKeyExchange,
    counter_nonce,
    generate_keypair,
    keypair_from_secret,
    sign_id_pk,
    verify_id_pk,
)
from hubbub.wire.rustdesk.framing import FrameDecoder, encode_frame
from hubbub.wire.rustdesk.messages import parse, pb
from hubbub.wire.rustdesk.stream import KxState, RendezvousStream


SEED = bytes(range(32))


def _frames(data: bytes) -> list[bytes]:
    return FrameDecoder(1 << 20).feed(data)


def _client_kx(stream: RendezvousStream, server_pub: bytes) -> SecretBox:
    hello = parse(_frames(stream.data_to_send())[0])
    assert hello is not None and hello.WhichOneof("union") == "key_exchange"
    eph = VerifyKey(server_pub).verify(hello.key_exchange.keys[0])
    mine = PrivateKey.generate()
    key = os.urandom(32)
    sealed = Box(mine, PublicKey(eph)).encrypt(key, bytes(24)).ciphertext
    reply = pb.RendezvousMessage(key_exchange=pb.KeyExchange(keys=[bytes(mine.public_key),
                                                                   sealed]))
    assert stream.receive_data(encode_frame(reply.SerializeToString())) == []
    return SecretBox(key)


def test_secure_stream_handshake_and_counters() -> None:
    sk = SigningKey(SEED)
    stream = RendezvousStream(kx=ServerKeyExchange(sk))
    box = _client_kx(stream, bytes(sk.verify_key))
    assert stream.state is KxState.SECURE
    plain = pb.RendezvousMessage(test_nat_request=pb.TestNatRequest(serial=1)).SerializeToString()
    ct1 = box.encrypt(plain, counter_nonce(1)).ciphertext
    ct2 = box.encrypt(plain, counter_nonce(2)).ciphertext
    # Heartbeats stay in clear and do not advance the counters.
    assert stream.receive_data(encode_frame(ct1) + b"\x00" + encode_frame(ct2)) == [
        plain, b"", plain]
    stream.send(b"hello, client")
    stream.send_heartbeat()
    out = _frames(stream.data_to_send())
    assert box.decrypt(out[0], counter_nonce(1)) == b"hello, client" and out[1] == b""
    # A replayed frame fails authentication: fatal.
    with pytest.raises(RemoteProtocolError):
        stream.receive_data(encode_frame(ct1))


def test_opportunistic_plain_and_bad_handshakes() -> None:
    sk = SigningKey(SEED)
    stream = RendezvousStream(kx=ServerKeyExchange(sk))
    stream.data_to_send()
    msg = pb.RendezvousMessage(punch_hole_sent=pb.PunchHoleSent(id="b")).SerializeToString()
    assert stream.receive_data(encode_frame(msg)) == [msg]
    assert stream.state is KxState.PLAIN
    kx = pb.RendezvousMessage(key_exchange=pb.KeyExchange(keys=[b"x" * 32, b"y" * 48]))
    with pytest.raises(RemoteProtocolError):  # too late for a handshake
        stream.receive_data(encode_frame(kx.SerializeToString()))
    fresh = RendezvousStream(kx=ServerKeyExchange(sk))
    with pytest.raises(RemoteProtocolError):  # sealed key does not open
        fresh.receive_data(encode_frame(kx.SerializeToString()))
    one = pb.RendezvousMessage(key_exchange=pb.KeyExchange(keys=[b"x"]))
    with pytest.raises(RemoteProtocolError):
        RendezvousStream(kx=ServerKeyExchange(sk)).receive_data(
            encode_frame(one.SerializeToString()))
    plain = RendezvousStream()
    assert plain.data_to_send() == b""
    with pytest.raises(RemoteProtocolError):  # no handshake was offered
        plain.receive_data(encode_frame(kx.SerializeToString()))
    with pytest.raises(FrameTooLarge):
        RendezvousStream(max_frame=100).receive_data(b"\x03\x00\x00\x10")


def test_garbage_frames_pass_through_to_the_handler() -> None:
    stream = RendezvousStream()
    assert stream.receive_data(encode_frame(b"\xff\xfe\xfd")) == [b"\xff\xfe\xfd"]
    assert parse(b"\xff\xfe\xfd") is None


def test_signed_id_pk_roundtrip() -> None:
    sk = SigningKey(SEED)
    signed = sign_id_pk(sk, "123456789", b"k" * 32)
    assert len(signed) == 64 + len(pb.IdPk(id="123456789", pk=b"k" * 32).SerializeToString())
    assert verify_id_pk(bytes(sk.verify_key), signed) == ("123456789", b"k" * 32)
    assert verify_id_pk(bytes(SigningKey.generate().verify_key), signed) is None
    assert verify_id_pk(bytes(sk.verify_key), b"short") is None


def test_key_files_and_key_semantics(tmp_path: Path) -> None:
    pair = load_or_create(tmp_path)
    secret = (tmp_path / "id_ed25519").read_text()
    pub = (tmp_path / "id_ed25519.pub").read_text()
    assert len(base64.b64decode(secret)) == 64 and len(pub) == 44 and "/" not in pub
    assert pub == pair.public_b64 and load_or_create(tmp_path).public_b64 == pub
    assert server_key("", tmp_path).licence == ""
    assert server_key("", tmp_path).signing is not None
    for enforce in ("-", "_"):
        k = server_key(enforce, tmp_path)
        assert k.licence == pub and k.licence_ok(pub) and not k.licence_ok("other")
    other = generate_keypair(SEED)
    k = server_key(other.secret_b64, tmp_path)
    assert k.licence == other.public_b64 and k.signing is not None
    k = server_key(pub, tmp_path)  # the data-dir pair's public key: signed with that pair
    assert k.signing is not None and k.licence == pub
    k = server_key(other.public_b64, tmp_path)  # a foreign public key: required, not signed
    assert k.signing is None and k.licence == other.public_b64
    assert relay_licence("", tmp_path) == "" and relay_licence("_", tmp_path) == pub
    assert keypair_from_secret("not base64!") is None
    assert keypair_from_secret(base64.b64encode(b"x" * 64).decode()) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "id_ed25519").write_text("AAAA")
    with pytest.raises(ConfigError):
        load_or_create(tmp_path / "bad")


def test_bounded_map_caps_and_expires() -> None:
    m: BoundedMap[str, int] = BoundedMap(max_size=100, ttl=10.0)
    for i in range(1000):
        m.put(str(i), i, now=float(i) / 100)
    assert len(m) == 100 and m.get("999", 9.99) == 999 and m.get("0", 9.99) is None
    assert m.get("950", 30.0) is None
    assert m.sweep(100.0) == 99 and len(m) == 0


def test_ip_limiter_rules() -> None:
    lim = IpLimiter()
    t = 1000.0
    assert all(lim.allow("1.2.3.4", f"id{i % 5}", t + i) for i in range(31))
    assert not lim.allow("1.2.3.4", "id0", t + 32)
    assert lim.allow("1.2.3.4", "id0", t + 33 + 61)  # quiet for a minute: reset
    many = IpLimiter(burst=10_000)
    assert all(many.allow("5.6.7.8", f"n{i}", t) for i in range(300))
    assert not many.allow("5.6.7.8", "n-new", t)
    assert many.allow("5.6.7.8", "n1", t)  # known IDs pass
    bounded = IpLimiter(max_ips=50)
    for i in range(10_000):
        bounded.allow(f"10.0.{i // 256}.{i % 256}", "x", t)
    assert len(bounded.map) == 50


def test_id_limiter() -> None:
    lim: WindowLimit[str] = WindowLimit(3, 6.0, max_keys=200_000)  # hbbs: 3 per 6 s per ID
    assert [lim.allow("a", 0.0), lim.allow("a", 1.0), lim.allow("a", 2.0)] == [True] * 3
    assert not lim.allow("a", 3.0)
    assert lim.allow("a", 10.0)


def test_ids_and_bitmap() -> None:
    assert valid_register_id("123456789") and valid_register_id("my-pc.local")
    assert not valid_register_id("") and not valid_register_id("a b")
    assert not valid_register_id("x" * 65)
    assert valid_custom_id("Alice_01") and not valid_custom_id("1alice1")
    assert not valid_custom_id("abc") and not valid_custom_id("a" * 17)
    assert online_bitmap([]) == b""
    assert online_bitmap([True]) == b"\x80"
    assert online_bitmap([False] * 8 + [True]) == b"\x00\x80"
    assert online_bitmap([True, False, True] + [False] * 6) == b"\xa0\x00"


def test_plan_punch() -> None:
    net = parse_mask("192.168.0.0/16")
    kw = {"always_relay": False, "local_ip": "192.168.1.1", "relay_server": "r"}
    same = plan_punch("1.1.1.1", "1.1.1.1", websocket=False, network=None, **kw)  # type: ignore[arg-type]
    assert same.fetch_local and not same.force_symmetric
    ws = plan_punch("1.1.1.1", "1.1.1.1", websocket=True, network=None, **kw)  # type: ignore[arg-type]
    assert not ws.fetch_local
    lan_b = plan_punch("8.8.8.8", "192.168.5.5", websocket=False, network=net, **kw)  # type: ignore[arg-type]
    assert lan_b.force_symmetric and lan_b.relay_server == "192.168.1.1"
    lan_a = plan_punch("192.168.5.5", "8.8.8.8", websocket=False, network=net, **kw)  # type: ignore[arg-type]
    assert lan_a.force_symmetric and lan_a.relay_server == "r"
    both = plan_punch("192.168.5.5", "192.168.9.9", websocket=False, network=net, **kw)  # type: ignore[arg-type]
    assert both.fetch_local
    always = plan_punch("1.1.1.1", "1.1.1.1", websocket=False, network=None, always_relay=True,
                        local_ip="", relay_server="r")
    assert always.force_symmetric and not always.fetch_local
    assert parse_mask("nonsense") is None


def test_choose_relay_host() -> None:
    shards = [
        {"host": "h1", "public_ip": "1.1.1.1", "ports": {"relay": 21117},
         "load": {"relay_pairs": 3, "relay_bps": 10.0}},
        {"host": "h1", "public_ip": "1.1.1.1", "ports": {"relay": 21117},
         "load": {"relay_pairs": 3, "relay_bps": 10.0}},
        {"host": "h2", "public_ip": "2.2.2.2", "ports": {"relay": 30000},
         "load": {"relay_pairs": 5, "relay_bps": 99.0}},
        {"host": "h3", "public_ip": "3.3.3.3", "ports": {}, "load": {}},
        {"host": "h4", "public_ip": "4.4.4.4", "ports": {"relay": 21117}, "state": "draining"},
    ]
    assert choose_relay_host(shards) == "2.2.2.2:30000"  # 5 pairs < 6 on h1
    assert choose_relay_host(shards[:2]) == "1.1.1.1"
    assert choose_relay_host([{"host": "v6", "public_ip": "2001:db8::1",
                               "ports": {"relay": 21117}}]) == "[2001:db8::1]"
    assert choose_relay_host([]) == ""


def test_trusted_proxies() -> None:
    proxies = ProxyList(("10.0.0.0/8", "::1"))
    assert proxies.trusted("10.1.2.3") and proxies.trusted("::1")
    assert not proxies.trusted("11.0.0.1") and not proxies.trusted("x")


def test_deferred_offer_keeps_talkative_clients_plain() -> None:
    sk = SigningKey(SEED)
    quiet = RendezvousStream(kx=ServerKeyExchange(sk), defer=True)
    assert quiet.data_to_send() == b"" and quiet.state is KxState.PENDING
    quiet.offer()
    box = _client_kx(quiet, bytes(sk.verify_key))
    assert quiet.secure and box is not None
    talkative = RendezvousStream(kx=ServerKeyExchange(sk), defer=True)
    req = pb.RendezvousMessage(test_nat_request=pb.TestNatRequest()).SerializeToString()
    assert talkative.receive_data(encode_frame(req)[:1]) == []  # even a partial frame counts
    talkative.offer()
    assert talkative.data_to_send() == b"" and talkative.state is KxState.PLAIN
    assert talkative.receive_data(encode_frame(req)[1:]) == [req]


def test_split_host_port() -> None:
    from gateway.rendezvous.logic import split_host_port

    assert split_host_port("relay.example", 21117) == ("relay.example", 21117)
    assert split_host_port("relay.example:30000", 21117) == ("relay.example", 30000)
    assert split_host_port("[2001:db8::1]:30000", 21117) == ("2001:db8::1", 30000)
    assert split_host_port("2001:db8::1", 21117) == ("2001:db8::1", 21117)


def test_admin_ip_changes_and_unknown_command() -> None:
    from types import SimpleNamespace

    from gateway.rendezvous.admin import local_command

    changes: BoundedMap[str, dict[str, int]] = BoundedMap(10, 360.0)
    changes.put("123456789", {"1.1.1.1": 1, "2.2.2.2": 3}, 0.0)
    changes.put("987654321", {"3.3.3.3": 1}, 0.0)
    svc = SimpleNamespace(ip_changes=changes.items)
    out = local_command(svc, "ip-changes", [])
    assert out.lines == ("123456789: {1.1.1.1: 1, 2.2.2.2: 3}",)
    assert local_command(svc, "nope", []).ok is False
