"""Moving an accepted relay half to the shard that owns its uuid.

The socket travels as an fd over an ``AF_UNIX SOCK_SEQPACKET`` socket in the abstract namespace
(``SCM_RIGHTS``), together with a small header (the ``Transfer`` contract): the uuid, the
transport, the peer address, the bytes already read behind the first message and how long the half
has waited. One connection
carries one half; the owner answers one byte (``1`` taken) so the sender knows whether to keep the
half itself. The fd was read only with plain ``recv`` calls, never owned by a transport, so the
receiver can wrap it in whatever pump it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Callable

from hubbub.contracts.relay import Transfer
from hubbub.errors import ContractError


__all__ = ["HandoffServer", "Transfer", "hand_over", "handoff_address"]

log = logging.getLogger("hubbub.relay.handoff")

MAX_MESSAGE = 256 * 1024
ACK = b"\x01"
NACK = b"\x00"


def handoff_address(prefix: str, process_id: str) -> str:
    """Abstract-namespace name of a shard's handoff socket (derivable from its process id)."""
    name = f"hubbub-relay:{prefix}{process_id}"
    if len(name.encode()) > 100:
        name = "hubbub-relay:" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return "\0" + name


async def hand_over(address: str, transfer: Transfer, fd: int, timeout: float = 2.0) -> str:
    """Send ``fd`` and ``transfer`` to the shard at ``address``.

    Returns ``"taken"`` once the owner took the half, ``"gone"`` when nothing listens at
    ``address`` (the owner process is dead), ``"failed"`` otherwise (busy, refused, timeout). In
    the last two cases the caller still owns its socket (a receiver closes fds it does not take).
    """
    loop = asyncio.get_running_loop()
    data = transfer.encode()
    if len(data) > MAX_MESSAGE:
        return "failed"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            try:
                await loop.sock_connect(s, address)
            except (ConnectionRefusedError, FileNotFoundError):
                return "gone"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE * 2)
            socket.send_fds(s, [data], [fd])
            ack = await loop.sock_recv(s, 1)
        return "taken" if ack == ACK else "failed"
    except (OSError, TimeoutError):
        return "failed"
    finally:
        s.close()


def _same_user(conn: socket.socket) -> bool:
    """Abstract sockets have no file permissions: only accept halves from our own user."""
    try:
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", cred)
    return bool(uid == os.getuid())


TakeHalf = Callable[[socket.socket, Transfer], bool]
"""Called with the received socket; returns whether the half was taken (else it is closed)."""


class HandoffServer:
    """Receive relay halves from the other shards of this host."""

    def __init__(self, address: str, take: TakeHalf, max_conns: int = 256) -> None:
        self.address = address
        self._take = take
        self._max = max_conns
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self.received = 0

    def start(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE * 2)
            s.bind(self.address)
            s.listen(128)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self._sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._on_accept)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for c in list(self._conns):
            self._drop(c)

    def _on_accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("handoff accept failed: %s", exc)
                return
            if len(self._conns) >= self._max or not _same_user(conn):
                conn.close()
                continue
            conn.setblocking(False)
            self._conns.add(conn)
            loop.add_reader(conn.fileno(), self._on_message, conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()

    def _on_message(self, conn: socket.socket) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        taken = False
        try:
            transfer = _decode(data)
            if transfer is not None and len(fds) == 1:
                sock = socket.socket(fileno=fds[0])
                fds = []
                sock.setblocking(False)
                try:
                    taken = self._take(sock, transfer)
                except Exception:
                    log.exception("taking a handed-over relay half failed")
                    taken = False
                if not taken:
                    sock.close()
                else:
                    self.received += 1
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.close(fd)
            with contextlib.suppress(OSError):
                conn.send(ACK if taken else NACK)
            self._drop(conn)


def _decode(data: bytes) -> Transfer | None:
    """None when ``data`` is not a transfer this version understands (the fd is closed)."""
    if not data:
        return None
    try:
        return Transfer.decode(data)
    except ContractError as exc:
        log.debug("handoff header refused: %s", exc)
        return None
