"""The RustDesk server key pair in the data directory, and ``-k``/``KEY`` semantics.

Files (same format as hbbs, so an existing install's files can be copied in):
``id_ed25519`` holds base64 of the 64-byte secret key, ``id_ed25519.pub`` base64 of the public
key without a newline. A missing pair is generated (public key without ``/``).

``KEY`` on the ID server:

=====================  ==================  ===========================
value                  signing key         licence key required
=====================  ==================  ===========================
empty (default)        data-dir pair       none
``-`` or ``_``         data-dir pair       the pair's public key
base64 secret key      that key            its public key
the pair's public key  data-dir pair       that public key
anything else          none (no signing)   that exact string
=====================  ==================  ===========================

``hubbub keygen`` prints the pair (and writes it when the data dir has none).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from hubbub.errors import ConfigError
from hubbub.wire.rustdesk.crypto import KeyPair, generate_keypair, keypair_from_secret


__all__ = ["ServerKey", "load_or_create", "main", "relay_licence", "server_key"]

SECRET_FILE = "id_ed25519"
PUBLIC_FILE = "id_ed25519.pub"


def load_or_create(data_dir: Path) -> KeyPair:
    """The pair in ``data_dir``, generated and written first if missing.

    Raises:
        ConfigError: the secret key file exists but does not hold a 64-byte key.
    """
    secret = data_dir / SECRET_FILE
    try:
        text = secret.read_text()
    except FileNotFoundError:
        return _create(data_dir)
    except OSError as exc:
        raise ConfigError(f"cannot read {secret}: {exc}") from exc
    pair = keypair_from_secret(text)
    if pair is None:
        raise ConfigError(f"malformed private key in {secret}")
    return pair


def _create(data_dir: Path) -> KeyPair:
    data_dir.mkdir(parents=True, exist_ok=True)
    pair = generate_keypair()
    secret = data_dir / SECRET_FILE
    # Gateways starting together race here: write aside and link, so exactly one pair wins.
    tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pair.secret_b64)
    won = True
    try:
        os.link(tmp, secret)
    except FileExistsError:
        won = False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not won:
        return load_or_create(data_dir)
    (data_dir / PUBLIC_FILE).write_text(pair.public_b64)
    return pair


@dataclass(frozen=True)
class ServerKey:
    """What the ID server signs with and what it requires as ``licence_key``."""

    signing: SigningKey | None
    licence: str
    public_b64: str

    def licence_ok(self, offered: str) -> bool:
        return not self.licence or offered == self.licence


def server_key(key: str, data_dir: Path) -> ServerKey:
    """Resolve ``KEY`` for the ID server (see the module table)."""
    if key in ("", "-", "_"):
        pair = load_or_create(data_dir)
        return ServerKey(pair.signing, pair.public_b64 if key else "", pair.public_b64)
    pair_or_none = keypair_from_secret(key)
    if pair_or_none is not None:
        return ServerKey(pair_or_none.signing, pair_or_none.public_b64, pair_or_none.public_b64)
    # hbbs stops signing when KEY is the public key itself, silently downgrading every session
    # to unencrypted; when the data-dir pair is that key, sign with it instead.
    if (data_dir / SECRET_FILE).exists():
        with contextlib.suppress(ConfigError):
            pair = load_or_create(data_dir)
            if pair.public_b64 == key.strip():
                return ServerKey(pair.signing, pair.public_b64, pair.public_b64)
    return ServerKey(None, key, key)


def relay_licence(key: str, data_dir: Path) -> str:
    """The licence key a relay requires (hbbr semantics: empty = no check)."""
    if not key:
        return ""
    if key in ("-", "_"):
        return load_or_create(data_dir).public_b64
    pair = keypair_from_secret(key)
    return pair.public_b64 if pair is not None else key


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hubbub keygen",
        description="print the RustDesk server key pair (created in the data dir if missing)")
    parser.add_argument("--data-dir", default=os.environ.get("HUBBUB_DATA", "./data"))
    parser.add_argument("--print-only", action="store_true",
                        help="generate a new pair and print it without writing any file")
    args = parser.parse_args(list(argv))
    if args.print_only:
        pair = generate_keypair()
    else:
        try:
            pair = load_or_create(Path(args.data_dir))
        except ConfigError as exc:
            print(f"hubbub keygen: error: {exc}")
            return 2
    print(f"Public Key:  {pair.public_b64}")
    print(f"Secret Key:  {pair.secret_b64}")
    return 0
