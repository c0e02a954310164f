"""Everything the media shard takes from aiortc, pyOpenSSL and pylibsrtp for DTLS and SRTP,
behind one small interface (``shards.media.sctp`` does the same for SCTP).

aiortc brings DTLS (``RTCDtlsTransport``); pylibsrtp brings the SRTP sessions DTLS keys. hubbub
drives them without aiortc's ICE or RTP stacks, which means using members aiortc keeps private:
the DTLS role, state, reader task and SRTP sessions, the OpenSSL objects of pyOpenSSL's
connection (so records, once the handshake is done, are read and written without a task
wake-up, an allocation or an exception per datagram), and libsrtp's functions from pylibsrtp's
binding (so a forwarded packet is protected in a buffer kept per subscriber, without the
per-call allocations of ``Session.protect``). Only this module and ``shards.media.sctp`` import
aiortc, pyOpenSSL or pylibsrtp; their ``contract_problems`` list what the pinned versions no
longer provide, and a test fails loudly on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from importlib.metadata import version
from typing import Any

from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    State as _DtlsState,
)
from OpenSSL._util import ffi as _ossl_ffi, lib as _ossl
from OpenSSL.SSL import Connection as _SSLConnection
from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib


__all__ = [
    "PINNED",
    "Certificate",
    "DtlsEndpoint",
    "IceLink",
    "SrtpReceiver",
    "SrtpSender",
    "certificate_fingerprints",
    "contract_problems",
    "drive",
    "new_certificate",
    "run_now",
]

log = logging.getLogger("hubbub.media.stack")

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
"""The versions whose private members this module relies on (pyproject pins them exactly)."""

Certificate = RTCCertificate

BUFFER = 2048
MAX_TRAILER = 144
"""Room libsrtp may append (tag and MKI); longer packets are refused, never overrun."""
MAX_PACKET = BUFFER - MAX_TRAILER


def new_certificate() -> RTCCertificate:
    return RTCCertificate.generateCertificate()


def certificate_fingerprints(certificate: RTCCertificate) -> list[tuple[str, str]]:
    return [(f.algorithm, f.value) for f in certificate.getFingerprints()]


class IceLink:
    """What ``RTCDtlsTransport`` sees as its ICE transport: a bounded queue and a send hook.

    Once DTLS is up, ``DtlsEndpoint`` takes each record straight from ``feed`` (``direct``):
    no queue, future or task wake-up per datagram.

    Args:
        send: sends one packet to the peer.
        role: the ICE role (a shard is ICE-lite, so ``controlled``; its clients control).
        limit: DTLS records kept until the handshake reads them; more are dropped.
    """

    state = "completed"

    def __init__(self, send: Callable[[bytes], None], role: str = "controlled",
                 limit: int = 64) -> None:
        self.role = role
        self.send = send
        self._limit = limit
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.direct: Callable[[bytes], None] | None = None
        """Handles each record as it arrives, instead of the queue (set after the handshake)."""

    def feed(self, data: bytes) -> None:
        direct = self.direct
        if direct is not None:
            direct(data)
            return
        if self._closed or len(self._queue) >= self._limit:
            return
        self._queue.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _recv(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise ConnectionError("transport closed")
            if self._loop is None:  # kept: each lookup makes a getpid() system call
                self._loop = asyncio.get_running_loop()
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._queue.popleft()

    async def _send(self, data: bytes) -> None:
        self.send(data)

    def close(self) -> None:
        self._closed = True
        self.direct = None
        self._queue.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


Process = Callable[[bytes | bytearray], bytes | None]


def _processor(session: Session, func: Any) -> Process:
    """One libsrtp operation on ``session`` working in a buffer of its own: the packet is
    copied in, transformed in place, and copied out (``None`` when libsrtp refuses it)."""
    ctx = session._srtp[0]
    cbuf = ffi.new("char[]", BUFFER)
    buf = ffi.buffer(cbuf)
    size = ffi.new("int *")

    # The session rides along as a default so the context lives as long as the function does.
    def run(packet: bytes | bytearray, _owner: Session = session) -> bytes | None:
        n = len(packet)
        if n > MAX_PACKET:
            return None
        buf[0:n] = packet
        size[0] = n
        if func(ctx, cbuf, size):
            return None
        out: bytes = buf[0:size[0]]
        return out

    return run


class SrtpSender:
    """Protects outgoing packets; ``None`` means libsrtp refused (e.g. a replayed index)."""

    __slots__ = ("protect", "protect_rtcp")

    def __init__(self, session: Session) -> None:
        self.protect = _processor(session, lib.srtp_protect)
        self.protect_rtcp = _processor(session, lib.srtp_protect_rtcp)


class SrtpReceiver:
    """Authenticates and decrypts incoming packets; ``None`` for anything that fails."""

    __slots__ = ("unprotect", "unprotect_rtcp")

    def __init__(self, session: Session) -> None:
        self.unprotect = _processor(session, lib.srtp_unprotect)
        self.unprotect_rtcp = _processor(session, lib.srtp_unprotect_rtcp)


RECORD = 1500
"""Bytes taken from OpenSSL's output at a time (one datagram's worth, as aiortc does) and the
largest plaintext record read."""
_APPLICATION_DATA = 23
_RECORD_HEADER = 13
"""A DTLS 1.2 record header: its length field is the last two bytes."""
_WANT_READ = _ossl.SSL_ERROR_WANT_READ
_ZERO_RETURN = _ossl.SSL_ERROR_ZERO_RETURN
_CONNECTED = _DtlsState.CONNECTED


class DtlsEndpoint:
    """aiortc's DTLS over an ``IceLink``; after the handshake, the SRTP keys it exported and
    records read and written straight through OpenSSL.

    aiortc reads each datagram in a task woken through a future, and pyOpenSSL allocates a
    buffer per call and raises for every empty read. Once connected (and no handshake timer
    runs), the endpoint decrypts each record as ``feed`` hands it over, passes the plaintext
    to the SCTP association at once, and encrypts in a buffer of its own. The handshake, its
    retransmissions and the shutdown stay aiortc's.

    Args:
        link: the packet path to the peer.
        certificate: this side's certificate.
        role: ``"client"`` or ``"server"``.
    """

    def __init__(self, link: IceLink, certificate: RTCCertificate, role: str) -> None:
        self.link = link
        self.dtls = RTCDtlsTransport(link, [certificate])  # type: ignore[arg-type]
        self.dtls._set_role(role)
        self.sender: SrtpSender | None = None
        self.receiver: SrtpReceiver | None = None
        self._ssl: Any = None
        """OpenSSL's SSL object while records go through it directly."""
        self._bio_in: Any = None
        self._bio_out: Any = None
        self._buf = _ossl_ffi.new("char[]", RECORD)
        self._receiver: Any = None
        self._receive: Callable[[bytes], None] = _drop

    def set_role(self, role: str) -> None:
        self.dtls._set_role(role)

    @property
    def state(self) -> str:
        return str(self.dtls.state)

    async def start(self, fingerprints: list[tuple[str, str]], remote_role: str = "auto") -> bool:
        """Run the handshake against a peer with one of ``fingerprints``; True when connected.

        aiortc raises assorted errors on hostile handshakes: they all mean "not connected".
        """
        prints = [RTCDtlsFingerprint(a, v) for a, v in fingerprints]
        try:
            await self.dtls.start(RTCDtlsParameters(fingerprints=prints, role=remote_role))
        except Exception:
            return False
        if self.dtls.state != "connected":
            return False
        self.sender = SrtpSender(self.dtls._tx_srtp)
        self.receiver = SrtpReceiver(self.dtls._rx_srtp)
        conn = self.dtls._ssl
        if conn is not None and conn.DTLSv1_get_timeout() is None:
            # Otherwise aiortc's reader keeps serving the timer (and the records) for good.
            self._ssl, self._bio_in, self._bio_out = conn._ssl, conn._into_ssl, conn._from_ssl
            self.link.direct = self._on_record
        return True

    def _on_record(self, data: bytes) -> None:
        """One datagram from the peer: every record in it decrypted, whatever OpenSSL answers
        sent, then the plaintext handed to the SCTP association."""
        ssl, buf = self._ssl, self._buf
        _ossl.BIO_write(self._bio_in, data, len(data))
        if data[0] == _APPLICATION_DATA and _RECORD_HEADER + (data[11] << 8 | data[12]) \
                == len(data) and (n := _ossl.SSL_read(ssl, buf, RECORD)) > 0:
            # The usual datagram, one application data record: nothing else to read, and
            # nothing OpenSSL could have to answer.
            receiver = self.dtls._data_receiver
            if receiver is not None:
                self._handler(receiver)(_ossl_ffi.buffer(buf, n)[:])
            return
        plain = []
        while (n := _ossl.SSL_read(ssl, buf, RECORD)) > 0:
            plain.append(_ossl_ffi.buffer(buf, n)[:])
        error = _ossl.SSL_get_error(ssl, n)
        if error != _WANT_READ:
            _ossl.ERR_clear_error()  # a bad record is dropped, as aiortc drops it
        self._write_out()
        if error == _ZERO_RETURN:
            self._closed_by_peer()
            return
        receiver = self.dtls._data_receiver
        if receiver is not None:
            handler = self._handler(receiver)
            for record in plain:
                handler(record)

    def _handler(self, receiver: Any) -> Callable[[bytes], None]:
        """What takes SCTP packets for ``receiver``: an ``SctpAssociation``'s synchronous
        entry, else aiortc's ``_handle_data`` run at once."""
        if receiver is not self._receiver:
            self._receiver = receiver
            self._receive = getattr(receiver, "receive_packet", None) \
                or (lambda data: drive(receiver._handle_data(data)))
        return self._receive

    def _closed_by_peer(self) -> None:
        # What aiortc's reader does on close_notify: the transport is closed for good.
        self.link.direct = None
        self._ssl = None
        self.dtls._set_state(_DtlsState.CLOSED)
        task = self.dtls._task
        if task is not None:
            task.cancel()

    def send_record(self, data: bytes) -> None:
        """Encrypt ``data`` (one SCTP packet) in one record and send it.

        Raises:
            ConnectionError: DTLS is not (or no longer) connected.
        """
        ssl = self._ssl
        if ssl is None:
            run_now(self.dtls._send_data(data))
            return
        if self.dtls._state is not _CONNECTED:
            raise ConnectionError("DTLS is not connected")
        if _ossl.SSL_write(ssl, data, len(data)) <= 0:
            _ossl.ERR_clear_error()
            raise ConnectionError("DTLS refused a record")
        self._write_out()

    def _write_out(self) -> None:
        buf, bio, send = self._buf, self._bio_out, self.link.send
        while (n := _ossl.BIO_read(bio, buf, RECORD)) > 0:
            send(_ossl_ffi.buffer(buf, n)[:])
            if n < RECORD:
                return  # what was there is all read

    async def stop(self) -> None:
        self.sender = self.receiver = None
        self.link.direct = None
        self._ssl = None
        await self.dtls.stop()


def _drop(data: bytes) -> None:
    pass


def drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a packet handler of aiortc's (a coroutine that does not wait, here) right now; should
    it wait after all, a task runs the rest. What it raises on hostile input drops the packet,
    never the caller's loop."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:
        log.debug("SCTP packet dropped", exc_info=True)
        return
    asyncio.ensure_future(_finish(coro, waiting))


class _Rest:
    """Awaiting it runs the rest of a coroutine ``drive`` started: what the coroutine waits
    on goes to the awaiting task, which resumes the coroutine when it is done."""

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting = self.waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # noqa: BLE001 - passed on, as a task would
                try:
                    waiting = self.coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = self.coro.send(None)
            except StopIteration:
                return


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    try:
        await _Rest(coro, waiting)
    except Exception:
        log.debug("SCTP packet dropped", exc_info=True)


def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (aiortc's transmit step once its chunk sends are
    buffered, DTLS's send over an ``IceLink``) to its end, right now."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("an SCTP send step suspended")


def contract_problems() -> list[str]:
    """What this module relies on and the installed aiortc/pyOpenSSL/pylibsrtp no longer
    provide."""
    problems = [f"{name} {version(name)} installed, {want} pinned"
                for name, want in PINNED.items() if version(name) != want]
    for name in ("_set_role", "_recv_next", "_write_ssl", "_send_data", "start", "stop"):
        if not callable(getattr(RTCDtlsTransport, name, None)):
            problems.append(f"RTCDtlsTransport.{name}")
    dtls_init = RTCDtlsTransport.__init__.__code__.co_names
    problems += [f"RTCDtlsTransport.{a}" for a in (
        "_rx_srtp", "_tx_srtp", "_data_receiver", "_ssl", "_task", "_state")
        if a not in dtls_init]
    if "_write_ssl" not in RTCDtlsTransport._send_data.__code__.co_names:
        problems.append("RTCDtlsTransport._send_data")
    if not {"CONNECTED", "CLOSED"} <= set(_DtlsState.__members__):
        problems.append("aiortc DTLS State")
    conn_init = _SSLConnection.__init__.__code__.co_names
    problems += [f"pyOpenSSL Connection.{a}" for a in ("_ssl", "_into_ssl", "_from_ssl")
                 if a not in conn_init]
    problems += [f"OpenSSL {f}" for f in (
        "BIO_read", "BIO_write", "SSL_read", "SSL_write", "SSL_get_error", "ERR_clear_error",
        "SSL_ERROR_WANT_READ", "SSL_ERROR_ZERO_RETURN") if not hasattr(_ossl, f)]
    session_init = Session.__init__.__code__.co_names
    if "_srtp" not in session_init:
        problems.append("pylibsrtp.Session._srtp")
    for func in ("srtp_protect", "srtp_protect_rtcp", "srtp_unprotect", "srtp_unprotect_rtcp"):
        if not hasattr(lib, func):
            problems.append(f"libsrtp {func}")
    return problems
