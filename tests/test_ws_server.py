"""WebSocket ports answer one HTTP request per connection, whatever the client pipelines."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time

import pytest
from support import Cluster, free_port, free_port_block
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from hubbub.ws_server import EARLY_BYTES_LIMIT, HeadFirstConnection


PIPELINED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2


def _ok(conn: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    body = b"ok\n"
    return Response(200, "OK", Headers([("Content-Length", str(len(body))),
                                        ("Connection", "close")]), body)


async def _exchange(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    finally:
        writer.close()
    return data


def _upgrade() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def test_pipelined_requests_get_one_answer_and_no_error(
        caplog: pytest.LogCaptureFixture) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    caplog.set_level(logging.INFO)
    async with serve(handler, "127.0.0.1", 0, process_request=_ok,
                     create_connection=HeadFirstConnection) as server:
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            data = await _exchange(port, PIPELINED)
            assert data.count(b"HTTP/1.1 200") == 1 and data.endswith(b"ok\n")
        # A head split at every byte boundary is still found.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in PIPELINED:
            writer.write(bytes([byte]))
            await writer.drain()
        async with asyncio.timeout(3):
            data = await reader.read()
        writer.close()
        assert data.count(b"HTTP/1.1 200") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_frames_sent_with_the_upgrade_reach_the_handler() -> None:
    got: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await got.put(message)

    async with serve(handler, "127.0.0.1", 0, process_request=_ok,
                     create_connection=HeadFirstConnection) as server:
        port = server.sockets[0].getsockname()[1]
        frame = Frame(Opcode.TEXT, b"early").serialize(mask=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_upgrade() + frame)
        async with asyncio.timeout(3):
            assert await got.get() == "early"
            assert b"101" in await reader.readuntil(b"\r\n\r\n")
        writer.close()


async def test_too_many_early_bytes_close_the_connection() -> None:
    release = asyncio.Event()

    async def slow(conn: ServerConnection, request: Request) -> Response | None:
        await release.wait()
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=slow,
                     create_connection=HeadFirstConnection) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_upgrade())
        closed = False
        try:
            async with asyncio.timeout(5):
                for _ in range(EARLY_BYTES_LIMIT // 4096 + 64):
                    writer.write(b"\x00" * 4096)
                    await writer.drain()
                closed = await reader.read() == b""
        except ConnectionError:
            closed = True
        writer.close()
        assert closed
        release.set()


def test_pipelined_requests_on_gateway_ports(cluster: Cluster) -> None:
    spaces, rendezvous = free_port(), free_port_block(4) + 1
    gateway = cluster.start("gateway", env={"SPACES_PORT": str(spaces),
                                            "RENDEZVOUS_PORT": str(rendezvous)})
    for _ in range(10):
        data = asyncio.run(_exchange(spaces, PIPELINED))
        assert data.count(b"HTTP/1.1 200") == 1, data
        data = asyncio.run(_exchange(rendezvous + 2, PIPELINED))
        assert data.count(b"HTTP/1.1 ") == 1, data
    time.sleep(0.3)
    log = gateway.log()
    assert "unexpected internal error" not in log and "Traceback" not in log
