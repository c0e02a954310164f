"""Console passwords: scrypt hashes (memory-hard, standard library) and the first admin's secret.

A hash is stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`` so the cost can be raised later
without invalidating existing users. Hashing takes tens of milliseconds and 16 MiB by design:
callers on an event loop run it in a thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path


__all__ = ["ADMIN_PASSWORD_FILE", "MAX_PASSWORD", "MIN_PASSWORD", "first_admin_password",
           "generate_password", "hash_password", "login_hint", "verify_password"]

N, R, P = 2**14, 8, 1
"""scrypt cost: 16 MiB of memory per hash (128 * N * R bytes)."""
KEY_LEN = 32
MAX_MEM = 64 * 1024 * 1024
MIN_PASSWORD = 8
MAX_PASSWORD = 256
"""Longer input is refused before hashing, so a login cannot cost more than any other."""
ADMIN_PASSWORD_FILE = "admin_password"

_DUMMY = f"scrypt${N}${R}${P}${base64.b64encode(b'0' * 16).decode()}$" + "A" * 44


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEM,
                          dklen=KEY_LEN)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, N, R, P)
    return (f"scrypt${N}${R}${P}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(key).decode()}")


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; ``None`` (no such user) still costs one hash, so
    timing does not tell which user names exist."""
    if len(password) > MAX_PASSWORD:
        return False
    parts = (stored or _DUMMY).split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("unknown hash format")
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        if n > 2**20 or r > 16 or p > 4:
            raise ValueError("cost out of range")
        salt, key = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        got = _scrypt(password, salt, n, r, p)
    except ValueError:
        return False
    return stored is not None and hmac.compare_digest(got, key)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def first_admin_password(configured: str, data_dir: Path) -> tuple[str, bool]:
    """The first admin's password: ``ADMIN_PASSWORD``, else the one in the data dir's
    ``admin_password`` file, created (mode 0600) with a random password when missing.

    Returns:
        The password and whether this call created the file.
    """
    if configured:
        return configured, False
    path = data_dir / ADMIN_PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    # Write aside, then link into place: processes starting together all end up with one file.
    tmp = path.with_name(f".{ADMIN_PASSWORD_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_password() + "\n")
    created = True
    try:
        os.link(tmp, path)
    except FileExistsError:
        created = False
    finally:
        tmp.unlink()
    return path.read_text().strip(), created


def login_hint(configured: str, data_dir: Path) -> str:
    """How to log in to a cluster started with these settings (``hubbub up`` prints it).

    A generated password is shown only by the call that creates its file: once per data dir.
    """
    if configured:
        return "    log in as admin with the password in ADMIN_PASSWORD"
    password, created = first_admin_password("", data_dir)
    path = data_dir / ADMIN_PASSWORD_FILE
    if created:
        return (f"    log in as admin, password {password}\n"
                f"    (generated now and shown once; kept in {path}; "
                "change it with 'hubbub user passwd admin')")
    return (f"    log in as admin with the password in {path} "
            "(or a user from 'hubbub user list')")
