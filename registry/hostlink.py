"""Same-host delivery of inbox messages, without a Redis round trip.

Processes of one host each bind a Unix datagram socket named after the cluster prefix and their
process id, in a directory only this user may enter (``<tmp>/hubbub-<uid>``, mode 0700, so no
other local user can inject messages). A message for a process on the same host is sent there
directly; when that fails (the process is gone, its buffer is full, a message too large) the
caller falls back to its Redis inbox, so the link is only ever a shortcut, and keeps doing so
for a second so messages to one process stay in order. (A receiver queues few datagrams,
``net.unix.max_dgram_qlen``: a burst beyond that takes Redis.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hubbub.udp import DatagramEndpoint


__all__ = ["HostLink"]

log = logging.getLogger("hubbub.registry")

RCVBUF = 1 << 20
DETOUR = 1.0
"""After a failed direct send, messages for that process take Redis this long: a later one
sent directly must not overtake one still on its way through Redis."""
MAX_DETOURS = 1024


def link_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"hubbub-{os.getuid()}")


def _private_dir(path: str) -> bool:
    """Create ``path`` (0700) if needed; True when it is ours and closed to everyone else."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


class HostLink:
    """This process's end of the same-host link."""

    def __init__(self, prefix: str, process_id: str, on_message: Callable[[bytes], None]) -> None:
        self.prefix = prefix
        self._dir = link_dir()
        self._path = self.path(process_id)
        self._on_message = on_message
        self._sock: socket.socket | None = None
        self._endpoint: DatagramEndpoint | None = None
        self._detours: dict[str, float] = {}

    def path(self, process_id: str) -> str:
        digest = hashlib.sha1(f"{self.prefix}\0{process_id}".encode(),
                              usedforsecurity=False).hexdigest()[:32]
        return os.path.join(self._dir, f"{digest}.sock")

    def open(self) -> bool:
        """Bind this process's socket; False (link unused) when the directory is not private
        or the socket cannot be made."""
        try:
            if not _private_dir(self._dir):
                log.warning("%s is not a private directory: same-host messages go through Redis",
                            self._dir)
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind(self._path)
        except OSError as exc:
            log.warning("same-host link unavailable (%s): messages go through Redis", exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        self._endpoint = DatagramEndpoint(sock, self._received)
        return True

    def _received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._on_message(data)

    def send(self, process_id: str, data: bytes) -> bool:
        """Hand ``data`` to ``process_id`` (on this host) directly; False: use Redis."""
        if self._sock is None:
            return False
        until = self._detours.get(process_id)
        if until is not None:
            if time.monotonic() < until:
                return False
            del self._detours[process_id]
        try:
            self._sock.sendto(data, self.path(process_id))
        except OSError:  # gone, full, or too large: the inbox in Redis takes it
            if len(self._detours) >= MAX_DETOURS:
                self._detours.clear()
            self._detours[process_id] = time.monotonic() + DETOUR
            return False
        return True

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self._path)
