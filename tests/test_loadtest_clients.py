"""The load-test RustDesk clients against scripted (and hostile) servers.

The clients are gevent code, so each case runs in a subprocess that monkey-patches the standard
library first, as locust does; the pytest process itself must stay unpatched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


PRELUDE = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import socket, threading, time
    from hubbub.errors import HubbubError, LoadTestError
    from hubbub.wire.rustdesk.framing import encode_frame
    from hubbub.wire.rustdesk.messages import pb, serialize
    from loadtest.rustdesk_client import FramedConn, online_bit, online_query
    from loadtest.targets import Target

    def serve_once(reply):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        def run():
            conn, _ = srv.accept()
            conn.recv(4096)
            conn.sendall(reply)
            time.sleep(0.5)
            conn.close()
        threading.Thread(target=run, daemon=True).start()
        return Target(host="127.0.0.1", rendezvous_port=srv.getsockname()[1] + 1,
                      spread_ips=False)

    def msg(**member):
        m = pb.RendezvousMessage()
        for name, value in member.items():
            getattr(m, name).CopyFrom(value)
        return serialize(m)
""")


def _run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_online_query_skips_a_key_exchange_and_reads_the_bitmap() -> None:
    out = _run("""
        kx = msg(key_exchange=pb.KeyExchange(keys=[b"x" * 96]))
        ok = msg(online_response=pb.OnlineResponse(states=bytes([0b10100000])))
        t = serve_once(encode_frame(kx) + encode_frame(b"") + encode_frame(ok))
        states = online_query(t, "123456789", ["a", "b", "c"])
        print([online_bit(states, i) for i in range(3)])
    """)
    assert out == "[True, False, True]"


@pytest.mark.parametrize(("reply", "error"), [
    # A header announcing 1 GiB: refused before any payload is buffered.
    ("b'\\xff\\xff\\xff\\xff'", "FrameTooLarge"),
    # Garbage that is not a RendezvousMessage.
    ("encode_frame(b'\\xff\\xff\\xff')", "undecodable"),
    # The wrong message.
    ("encode_frame(msg(test_nat_response=pb.TestNatResponse(port=1)))", "expected OnlineResponse"),
    # A bitmap too short for the list (the real client would index past it).
    ("encode_frame(msg(online_response=pb.OnlineResponse(states=b'')))", "bitmap of 0 bytes"),
    # Nothing at all, then close.
    ("b''", "closed the connection"),
])
def test_online_query_fails_cleanly_on_hostile_answers(reply: str, error: str) -> None:
    out = _run(f"""
        t = serve_once({reply})
        try:
            online_query(t, "123456789", [str(i) for i in range(20)])
        except HubbubError as exc:
            print(type(exc).__name__, exc)
        else:
            print("no error")
    """)
    assert error in out, out


def test_framed_conn_times_out_on_silence() -> None:
    out = _run("""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        conn = FramedConn.connect(srv.getsockname())
        start = time.monotonic()
        try:
            conn.recv(0.3)
        except LoadTestError as exc:
            print(round(time.monotonic() - start, 1), exc)
    """)
    assert out.startswith(("0.3 ", "0.4 ")) and "no answer" in out, out


def test_spaces_player_survives_hostile_host_frames() -> None:
    out = _run("""
        import gevent, orjson
        from gevent.event import AsyncResult
        from hubbub.wire.wired.positions import encode_batch
        from loadtest.spaces_client import Player
        from loadtest.targets import NullRecorder
        rec = NullRecorder()
        p = Player(Target(spread_ips=False), rec, name="x")
        p.player_id = 7
        frames = [b"not json", b"[1,2]", b'{"subject": 5}']
        frames += [orjson.dumps({"subject": f"s{i}"}) for i in range(200)]
        for frame in frames:
            p._on_text(frame)
        print("subjects", len(p.received) <= 64)
        # An error naming the subject we sent fails exactly that waiter.
        w1, w2 = AsyncResult(), AsyncResult()
        p._waiters += [("chat", "player_chat", lambda d: True, w1),
                       ("set_name", "player_name", lambda d: True, w2)]
        p._on_text(orjson.dumps({"subject": "error", "data": {
            "code": "too_large", "message": "chat: longer than 1000", "subject": "chat"}}))
        print("chat failed", isinstance(w1.exception, LoadTestError), "name waits", not w2.ready())
        # Batches: garbage is a failure; our own record is skipped; others are timed.
        p._on_batch(b"\\x02garbage")
        own = bytes([7]) + bytes(20)
        p._on_batch(encode_batch([own]))
        names = [c[1] for c in rec.calls]
        print("bad batch", names.count("position batch") == 1,
              "own only not timed", "position batch (oldest record age)" not in names)
        print("invalid frames", sum(1 for c in rec.calls if c[1] == "host frame"))
    """)
    lines = out.splitlines()
    assert lines[-4] == "subjects True", out
    assert lines[-3] == "chat failed True name waits True", out
    assert lines[-2] == "bad batch True own only not timed True", out
    assert lines[-1] == "invalid frames 3", out
