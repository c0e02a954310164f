"""The shared building blocks: the IP address rule and the limits every service uses."""

from __future__ import annotations

import pytest

from hubbub.ipaddr import normalise_ip
from hubbub.limits import BoundedMap, SourceCounter, TokenBucket, WindowLimit
from hubbub.net import ProxyList
from hubbub.wire.rustdesk import addr
from hubbub.wire.webrtc import stun


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("text,canonical", [
    # IPv4
    ("1.2.3.4", "1.2.3.4"),
    (" 10.0.0.1 ", "10.0.0.1"),
    ("0.0.0.0", "0.0.0.0"),
    # IPv6
    ("2001:DB8::1", "2001:db8::1"),
    (" [2001:DB8::1] ", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("::", "::"),  # unspecified stays IPv6
    ("::1", "::1"),  # loopback stays IPv6
    # IPv4-mapped
    ("::ffff:1.2.3.4", "1.2.3.4"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("[::FFFF:127.0.0.1]", "127.0.0.1"),
    ("::ffff:0102:0304", "1.2.3.4"),
    # IPv4-compatible (deprecated; RustDesk clients read it as IPv4)
    ("::1.2.3.4", "1.2.3.4"),
    ("::0.0.0.2", "0.0.0.2"),
    ("[::10.0.0.1]", "10.0.0.1"),
    # scoped
    ("fe80::1%eth0", "fe80::1"),
    ("[fe80::1%2]", "fe80::1"),
    ("::ffff:1.2.3.4%eth0", "1.2.3.4"),
])
def test_ip_rule(text: str, canonical: str) -> None:
    assert normalise_ip(text) == canonical
    # The RustDesk codec, the socket-address helper and STUN follow the same rule.
    assert addr.normalize((text.strip(" []"), 9)) == (canonical, 9)
    assert addr.decode(addr.encode(text.strip(" []"), 9, 12345)) == (canonical, 9)
    txid = bytes(12)
    assert stun.unpack_xor_address(stun.pack_xor_address(text.strip(" []"), 9, txid),
                                   txid) == (canonical, 9)


@pytest.mark.parametrize("text", ["not-an-ip", "", "1.2.3", "1.2.3.4.5", "gggg::1", "[]"])
def test_ip_rule_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        normalise_ip(text)
    assert addr.normalize((text, 1)) == (text, 1)  # socket APIs' odd names pass through


def test_proxy_list_uses_the_rule() -> None:
    proxies = ProxyList(["10.0.0.0/8"])
    assert proxies.trusted("::10.1.1.1") and proxies.trusted("::ffff:10.1.1.1")
    assert proxies.client_ip("::ffff:10.0.0.5", {"X-Real-IP": "::1.2.3.4"}) == "1.2.3.4"


# ------------------------------------------------------------------ token bucket
def test_token_bucket_allow() -> None:
    b = TokenBucket(rate=10, burst=5)
    assert all(b.allow(0.0) for _ in range(5))
    assert not b.allow(0.0)
    assert b.allow(0.1)
    assert not b.allow(0.1)
    assert all(b.allow(10.0) for _ in range(5))  # refills to burst, never beyond
    assert not b.allow(10.0)


def test_token_bucket_cost_and_debt() -> None:
    b = TokenBucket(100.0, 50.0, now=0.0)
    assert b.allow(0.0, cost=30) and not b.allow(0.0, cost=30)  # all or nothing
    assert b.available(0.0) == 20
    b.consume(70, 0.0)  # a pump that already moved the bytes: into debt
    assert b.available(0.0) == -50
    assert b.wait_time(10, 0.0) == pytest.approx(0.6)
    assert b.wait_time(1000, 0.0) == pytest.approx(1.0)  # at most a burst is waited for
    assert b.available(10.0) == 50
    assert b.allow(9.0, cost=1)  # a clock reading from the past refills nothing
    assert b.available(10.0) == 49


def test_token_bucket_unlimited_and_new_rate() -> None:
    free = TokenBucket(0.0, 10.0)
    assert free.unlimited and free.available(5.0) == float("inf") and free.wait_time(1e9, 5.0) == 0
    assert all(free.allow(0.0, cost=100) for _ in range(100))
    b = TokenBucket(100.0, 100.0, now=0.0)
    b.set_rate(10.0, 20.0, 0.0)
    assert b.available(0.0) == 20 and b.rate == 10


# ------------------------------------------------------------------ maps and counters
def test_bounded_map_lru_and_touch() -> None:
    m: BoundedMap[str, int] = BoundedMap(max_size=2, ttl=10.0)
    m.put("a", 1, 0.0)
    m.put("b", 2, 0.0)
    assert m.get("a", 1.0) == 1
    m.touch("a", 5.0)
    m.put("c", 3, 5.0)  # "b" is the least recently used
    assert "b" not in m and m.get("a", 14.0) == 1 and m.get("c", 15.1) is None
    assert m.pop("a") == 1 and m.pop("a") is None


def test_window_limit() -> None:
    lim: WindowLimit[str] = WindowLimit(3, 6.0, max_keys=2)
    assert [lim.allow("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert lim.blocked("a", 3.0) and not lim.blocked("b", 3.0)
    assert not lim.allow("a", 8.0)  # within 6 s of the last counted hit
    assert lim.allow("a", 8.1)
    for i in range(100):
        lim.allow(str(i), 10.0)
    assert len(lim.map) == 2
    assert lim.sweep(100.0) == 2


def test_source_counter() -> None:
    c: SourceCounter[str] = SourceCounter(limit=2)
    assert c.add("x") and c.add("x") and not c.add("x") and c.add("y")
    assert c["x"] == 2 and len(c) == 2
    c.remove("x")
    c.remove("x")
    c.remove("x")  # never below zero
    c.remove("nobody")
    assert c["x"] == 0 and len(c) == 1
