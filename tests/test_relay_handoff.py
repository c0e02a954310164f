"""Relay socket plumbing in one process: fd handoff between shards, dual-stack listeners."""

from __future__ import annotations

import asyncio
import os
import socket

from hubbub.ipaddr import normalise_ip
from hubbub.net import listen_socket
from shards.relay.handoff import HandoffServer, Transfer, hand_over, handoff_address


async def test_handoff_moves_a_live_socket_with_its_bytes() -> None:
    taken: list[tuple[socket.socket, Transfer]] = []

    def take(sock: socket.socket, t: Transfer) -> bool:
        taken.append((sock, t))
        return True

    server = HandoffServer(handoff_address("test:", f"p{os.getpid()}-{id(taken)}"), take)
    server.start()
    ours, client = socket.socketpair()
    try:
        t = Transfer("uuid-1", "tcp", "10.0.0.1", 4242, b"already read", 0.0)
        assert await hand_over(server.address, t, ours.fileno()) == "taken"
        ours.close()  # the receiver holds its own copy of the connection now
        (sock, got), = taken
        assert got == t
        sock.setblocking(True)
        client.sendall(b"to the new owner")
        assert sock.recv(100) == b"to the new owner"
        sock.sendall(b"back")
        assert client.recv(100) == b"back"
        sock.close()
    finally:
        server.close()
        client.close()


async def test_handoff_refused_or_gone() -> None:
    a, b = socket.socketpair()
    try:
        t = Transfer("u", "tcp", "::1", 1, b"", 0.0)
        assert await hand_over(handoff_address("test:", "nobody-here"), t, a.fileno()) == "gone"
        server = HandoffServer(handoff_address("test:", f"refuse-{os.getpid()}"),
                               lambda sock, tr: False)
        server.start()
        try:
            assert await hand_over(server.address, t, a.fileno()) == "failed"
        finally:
            server.close()
        a.sendall(b"still mine")  # a refused handoff leaves the socket with the sender
        assert b.recv(100) == b"still mine"
    finally:
        a.close()
        b.close()


async def test_dual_stack_listener_sees_ipv4_peers_as_mapped() -> None:
    listener = listen_socket("::", 0)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        client = socket.create_connection(("127.0.0.1", port))
        conn, addr = await loop.sock_accept(listener)
        assert addr[0] == "::ffff:127.0.0.1"
        assert normalise_ip(addr[0]) == "127.0.0.1"
        conn.close()
        client.close()
    finally:
        listener.close()
