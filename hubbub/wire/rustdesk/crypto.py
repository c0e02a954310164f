"""NaCl primitives of the RustDesk rendezvous protocol (libsodium formats via PyNaCl).

* the server key pair: 64-byte sodium secret key (seed || public key), base64 in files;
* the signed ``IdPk`` handed to controllers so they can trust the controlled peer's key;
* the server side of the secure-TCP ``KeyExchange`` and its counter-nonce secretbox framing.

Randomness is injectable (``seed`` / ``eph_sk`` arguments) so tests are deterministic.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from hubbub.errors import RemoteProtocolError
from hubbub.wire.rustdesk import rendezvous_pb2 as pb


__all__ = [
    "KeyPair",
    "SecretChannel",
    "ServerKeyExchange",
    "counter_nonce",
    "generate_keypair",
    "keypair_from_secret",
    "sign_id_pk",
    "verify_id_pk",
]

ZERO_NONCE = bytes(24)


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 server key pair in the formats hbbs keeps on disk."""

    signing: SigningKey

    @property
    def secret64(self) -> bytes:
        """The 64-byte sodium secret key: seed || public key."""
        return bytes(self.signing) + bytes(self.signing.verify_key)

    @property
    def public(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def secret_b64(self) -> str:
        return base64.b64encode(self.secret64).decode()


def keypair_from_secret(text: str) -> KeyPair | None:
    """The pair in a base64 64-byte secret key (whitespace trimmed); None if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 64:
        return None
    pair = KeyPair(SigningKey(raw[:32]))
    if pair.public != raw[32:]:
        return None
    return pair


def generate_keypair(seed: bytes | None = None, tries: int = 300) -> KeyPair:
    """A fresh pair whose base64 public key has no ``/`` (it ends up in file names).

    ``seed`` makes the first try deterministic (tests); later tries are random.
    """
    pair = KeyPair(SigningKey(seed) if seed is not None else SigningKey.generate())
    for _ in range(tries):
        if "/" not in pair.public_b64:
            break
        pair = KeyPair(SigningKey.generate())
    return pair


def sign_id_pk(signing: SigningKey, peer_id: str, pk: bytes) -> bytes:
    """``crypto_sign(IdPk{id, pk})``: 64-byte signature followed by the serialised IdPk."""
    msg = pb.IdPk(id=peer_id, pk=pk).SerializeToString()
    signed: bytes = signing.sign(msg)
    return signed


def verify_id_pk(public: bytes, signed: bytes) -> tuple[str, bytes] | None:
    """``(id, pk)`` from a signed IdPk if the signature verifies with ``public``."""
    try:
        msg = VerifyKey(public).verify(signed)
    except (CryptoError, ValueError, TypeError):
        return None
    idpk = pb.IdPk()
    try:
        idpk.ParseFromString(msg)
    except Exception:  # noqa: BLE001 - any decode failure means "not an IdPk"
        return None
    return idpk.id, idpk.pk


def counter_nonce(counter: int) -> bytes:
    """Secretbox nonce of the secure-TCP framing: 8-byte LE counter then 16 zero bytes."""
    return counter.to_bytes(8, "little") + bytes(16)


class SecretChannel:
    """Counter-nonce secretbox for one secure-TCP connection (both directions share the key).

    Payloads of 0 or 1 byte are passed through untouched and do not advance the counters
    (heartbeats travel in clear).
    """

    __slots__ = ("_box", "_recv", "_send")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise RemoteProtocolError("secretbox key must be 32 bytes")
        self._box = SecretBox(key)
        self._send = 0
        self._recv = 0

    def seal(self, plain: bytes) -> bytes:
        if len(plain) <= 1:
            return plain
        self._send += 1
        ct: bytes = self._box.encrypt(plain, counter_nonce(self._send)).ciphertext
        return ct

    def open(self, data: bytes) -> bytes:
        """Decrypt one received payload.

        Raises:
            RemoteProtocolError: authentication failed (fatal for the stream).
        """
        if len(data) <= 1:
            return data
        self._recv += 1
        try:
            plain: bytes = self._box.decrypt(data, counter_nonce(self._recv))
        except CryptoError:
            raise RemoteProtocolError("secure tcp: frame failed authentication") from None
        return plain


class ServerKeyExchange:
    """The server half of the secure-TCP handshake on one connection.

    ``hello()`` is the first frame payload the server sends; ``accept(msg)`` consumes the
    client's ``KeyExchange{keys: [client_pk, sealed_key]}`` and returns the channel.
    """

    def __init__(self, signing: SigningKey, eph_sk: bytes | None = None) -> None:
        # The ephemeral pair is made only when the handshake is offered: most connections
        # speak first and never use it, and making one costs more than the rest of a punch.
        self._eph = PrivateKey(eph_sk) if eph_sk is not None else None
        self._signing = signing

    def _pair(self) -> PrivateKey:
        if self._eph is None:
            self._eph = PrivateKey.generate()
        return self._eph

    def hello(self) -> bytes:
        signed: bytes = self._signing.sign(bytes(self._pair().public_key))
        msg = pb.RendezvousMessage(key_exchange=pb.KeyExchange(keys=[signed]))
        data: bytes = msg.SerializeToString()
        return data

    def accept(self, kx: pb.KeyExchange) -> SecretChannel:
        """Raises:
            RemoteProtocolError: the client's message is malformed or does not decrypt.
        """
        if len(kx.keys) != 2 or len(kx.keys[0]) != 32:
            raise RemoteProtocolError("secure tcp: malformed KeyExchange")
        try:
            box = Box(self._pair(), PublicKey(bytes(kx.keys[0])))
            key: bytes = box.decrypt(bytes(kx.keys[1]), ZERO_NONCE)
        except (CryptoError, ValueError, TypeError):
            raise RemoteProtocolError("secure tcp: sealed key does not open") from None
        if len(key) != 32:
            raise RemoteProtocolError("secure tcp: symmetric key must be 32 bytes")
        return SecretChannel(key)
