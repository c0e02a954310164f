"""A UDP endpoint on the event loop that reads datagrams in batches.

asyncio's datagram transport reads one datagram per readiness event, i.e. per loop iteration,
into a fresh 256 KiB buffer, and goes through a protocol object and a send path of its own.
Here one readiness callback drains up to ``max_batch`` datagrams into a buffer sized for a
datagram, and ``send`` is a direct ``sendto``: a datagram the kernel cannot take right now is
dropped and counted, as UDP allows, rather than queued.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from hubbub.metrics import FastCounterFamily


__all__ = ["DROPPED", "DatagramEndpoint", "DatagramHandler"]

log = logging.getLogger(__name__)

DatagramHandler = Callable[[bytes, tuple[Any, ...]], None]

DROPPED = FastCounterFamily(
    "hubbub_udp_dropped",
    "UDP datagrams dropped or failed: send_full (socket buffer full), send_error, "
    "recv_error (an error report read instead of a datagram), handler_error",
    ["reason"])
_SEND_FULL = DROPPED.labels("send_full")
_SEND_ERROR = DROPPED.labels("send_error")
_RECV_ERROR = DROPPED.labels("recv_error")
_HANDLER_ERROR = DROPPED.labels("handler_error")

# The largest UDP payload over IPv4 and IPv6 without jumbograms.
MAX_DATAGRAM = 65_535


class DatagramEndpoint:
    """Reads a bound non-blocking UDP socket into ``on_datagram(data, addr)``; sends directly.

    The endpoint owns the socket: ``close()`` stops reading and closes it. ``on_datagram`` runs
    synchronously in the reader; an exception from it is logged (once per exception type) and
    counted, and reading goes on. Addresses are as the socket's family gives and takes them.
    """

    def __init__(self, sock: socket.socket, on_datagram: DatagramHandler, *,
                 max_batch: int = 64, max_size: int = MAX_DATAGRAM,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if max_batch < 1 or not 0 < max_size <= MAX_DATAGRAM:
            raise ValueError("max_batch must be >= 1 and max_size in 1..65535")
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self.max_batch = max_batch
        self.max_size = max_size
        self._on_datagram = on_datagram
        self._loop = loop or asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._sendto = sock.sendto
        self._closed = False
        self._logged: set[type[BaseException]] = set()
        self._loop.add_reader(self._fd, self._read)

    @property
    def closed(self) -> bool:
        return self._closed

    def sockname(self) -> tuple[Any, ...]:
        name: tuple[Any, ...] = self.sock.getsockname()
        return name

    def send(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Send one datagram; False when it was dropped (buffer full, error, closed)."""
        try:
            self._sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            _SEND_FULL.value += 1
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                _SEND_FULL.value += 1
            else:
                _SEND_ERROR.value += 1
            return False
        except (TypeError, ValueError):  # an address of the wrong shape for this family
            _SEND_ERROR.value += 1
            return False
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self.sock.close()

    def _read(self) -> None:
        recvfrom = self.sock.recvfrom
        size = self.max_size
        handler = self._on_datagram
        for _ in range(self.max_batch):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error report (e.g. ECONNREFUSED) or a socket closed by the handler.
                if self._closed:
                    return
                _RECV_ERROR.value += 1
                continue
            try:
                handler(data, addr)
            except Exception as exc:  # the reader must outlive a bad handler
                self._handler_failed(exc)

    def _handler_failed(self, exc: Exception) -> None:
        _HANDLER_ERROR.value += 1
        if type(exc) not in self._logged:
            self._logged.add(type(exc))
            log.error("datagram handler failed (further %s not logged)", type(exc).__name__,
                      exc_info=exc)
