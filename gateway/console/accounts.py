"""Console users, sessions, login rate limits and the audit log, all in Redis.

Keys (under the cluster prefix), so any gateway serves any request:

* ``console:users`` hash ``name -> JSON {role, pw, created}`` (durable);
* ``console:session:<sha256 of the cookie>`` JSON ``{user, csrf, created, ip}`` with an idle TTL
  (the cookie itself is never stored);
* ``console:fail:ip:<ip>`` / ``console:fail:user:<name>`` failed logins in the current window;
* ``console:audit`` list of JSON entries, newest first, capped at ``AUDIT_MAX``.

Users and the audit log are shared by the console API and ``hubbub user``: one implementation.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from gateway.console.keys import console_key, json_object
from gateway.console.passwords import MAX_PASSWORD, MIN_PASSWORD, hash_password, verify_password
from registry import Registry


__all__ = ["AUDIT_MAX", "ROLES", "Accounts", "AccountError", "AuditEntry", "Busy", "Session",
           "User"]

ROLES = ("admin", "viewer")
SESSION_IDLE = 8 * 3600.0
"""A session ends after this long without a request."""
SESSION_MAX = 7 * 24 * 3600.0
"""... and this long after login in any case."""
FAIL_WINDOW = 300
MAX_FAILS_PER_IP = 10
MAX_FAILS_PER_USER = 5
AUDIT_MAX = 10_000
MAX_USERS = 1000
MAX_HASHING = 2
"""Password hashes computed at once per gateway (16 MiB each, one thread each); more queue."""
MAX_HASH_QUEUE = 64
"""Requests allowed to queue for a hash; beyond this a login or password change is refused."""
T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class AccountError(ValueError):
    """A user operation that cannot be done (bad name, role, password, last admin…)."""


class Busy(AccountError):
    """Too many password hashes waiting on this gateway; try again."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created": self.created}


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    role: str
    csrf: str
    created: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what, when, from where, and whether it worked."""

    t: float
    user: str
    action: str
    detail: str
    source: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "user": self.user, "action": self.action, "detail": self.detail,
                "source": self.source, "ok": self.ok}


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError("user names are 1-64 letters, digits or _.@-")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"passwords are {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return password


class Accounts:
    """Console accounts of one cluster; every call may raise ``RegistryUnavailable``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.redis = registry.redis
        self._waiting = 0
        # Own threads: scrypt's 16 MiB buffers come and go in the same two threads' heaps.
        self._pool = ThreadPoolExecutor(MAX_HASHING, thread_name_prefix="console-hash")

    async def _hash(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a password hash in a thread, at most ``MAX_HASHING`` at once.

        Raises:
            Busy: ``MAX_HASH_QUEUE`` requests already wait.
        """
        if self._waiting >= MAX_HASH_QUEUE:
            raise Busy("too many logins at once; try again")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ keys
    @property
    def users_key(self) -> str:
        return console_key(self.registry, "users")

    def session_key(self, token: str) -> str:
        return console_key(self.registry, "session", _token_key(token))

    def fail_key(self, kind: str, value: str) -> str:
        return console_key(self.registry, "fail", kind, value)

    @property
    def audit_key(self) -> str:
        return console_key(self.registry, "audit")

    # ----------------------------------------------------------------- users
    async def _record(self, name: str) -> dict[str, Any] | None:
        async with self.registry.guard("console_user"):
            raw: Any = await self.redis.hget(self.users_key, name)
        return json_object(raw)

    async def users(self) -> list[User]:
        async with self.registry.guard("console_user"):
            raw: dict[Any, Any] = await self.redis.hgetall(self.users_key)
        out = []
        for name, blob in raw.items():
            try:
                rec = orjson.loads(blob)
                out.append(User(name.decode(), str(rec["role"]), float(rec.get("created", 0))))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return sorted(out, key=lambda u: u.name)

    async def add_user(self, name: str, role: str, password: str, replace: bool = False) -> bool:
        """Create ``name``; False when it exists (and ``replace`` is off).

        Raises:
            AccountError: bad name, role or password, or too many users.
        """
        check_name(name)
        check_password(password)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        pw = await self._hash(hash_password, password)
        blob = orjson.dumps({"role": role, "pw": pw, "created": time.time()})
        async with self.registry.guard("console_user"):
            if await self.redis.hlen(self.users_key) >= MAX_USERS:
                raise AccountError(f"at most {MAX_USERS} users")
            if replace:
                await self.redis.hset(self.users_key, name, blob)
                return True
            return bool(await self.redis.hsetnx(self.users_key, name, blob))

    async def set_password(self, name: str, password: str) -> None:
        """Raises: AccountError: no such user or a bad password."""
        check_password(password)
        rec = await self._record(name)
        if rec is None:
            raise AccountError(f"no user {name!r}")
        rec["pw"] = await self._hash(hash_password, password)
        async with self.registry.guard("console_user"):
            await self.redis.hset(self.users_key, name, orjson.dumps(rec))

    async def remove_user(self, name: str) -> None:
        """Raises: AccountError: no such user, or it is the last admin."""
        users = await self.users()
        user = next((u for u in users if u.name == name), None)
        if user is None:
            raise AccountError(f"no user {name!r}")
        if user.role == "admin" and sum(u.role == "admin" for u in users) == 1:
            raise AccountError("the last admin cannot be removed")
        async with self.registry.guard("console_user"):
            await self.redis.hdel(self.users_key, name)

    async def ensure_admin(self, password: str) -> bool:
        """Create ``admin`` with ``password`` when the cluster has no user yet; True if created."""
        async with self.registry.guard("console_user"):
            if await self.redis.hlen(self.users_key):
                return False
        return await self.add_user("admin", "admin", password)

    async def authenticate(self, name: str, password: str) -> User | None:
        rec = await self._record(name) if _NAME.match(name) else None
        stored = rec.get("pw") if rec else None
        ok = await self._hash(verify_password, password,
                              stored if isinstance(stored, str) else None)
        if not ok or rec is None:
            return None
        return User(name, str(rec.get("role", "viewer")), float(rec.get("created", 0)))

    # -------------------------------------------------------------- sessions
    async def new_session(self, user: User, ip: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        sess = Session(user.name, user.role, secrets.token_urlsafe(24), time.time())
        blob = orjson.dumps({"user": sess.user, "csrf": sess.csrf, "created": sess.created,
                             "ip": ip})
        async with self.registry.guard("console_session"):
            await self.redis.set(self.session_key(token), blob, px=int(SESSION_IDLE * 1000))
        return token, sess

    async def session(self, token: str) -> Session | None:
        """The live session of ``token`` (its idle timer restarted); None when expired or its
        user was removed. The role is read from the user record, so a change applies at once."""
        if not token or len(token) > 128:
            return None
        key = self.session_key(token)
        async with self.registry.guard("console_session"):
            raw: Any = await self.redis.get(key)
            if raw is None:
                return None
            try:
                rec = orjson.loads(raw)
                user = str(rec["user"])
                created = float(rec["created"])
                csrf = str(rec["csrf"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return None
            urec: Any = await self.redis.hget(self.users_key, user)
            if urec is None or time.time() - created > SESSION_MAX:
                await self.redis.delete(key)
                return None
            await self.redis.pexpire(key, int(SESSION_IDLE * 1000))
        try:
            role = str(orjson.loads(urec)["role"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        return Session(user, role, csrf, created)

    async def end_session(self, token: str) -> None:
        async with self.registry.guard("console_session"):
            await self.redis.delete(self.session_key(token))

    # ---------------------------------------------------------- rate limits
    async def login_blocked(self, ip: str, name: str) -> float:
        """Seconds until ``ip`` or ``name`` may try again (0: now)."""
        async with self.registry.guard("console_limit"):
            async with self.redis.pipeline(transaction=False) as p:
                p.get(self.fail_key("ip", ip))
                p.get(self.fail_key("user", name[:64]))
                p.pttl(self.fail_key("ip", ip))
                p.pttl(self.fail_key("user", name[:64]))
                by_ip, by_user, ttl_ip, ttl_user = await p.execute()
        wait = 0.0
        if by_ip is not None and int(by_ip) >= MAX_FAILS_PER_IP:
            wait = max(wait, ttl_ip / 1000)
        if by_user is not None and int(by_user) >= MAX_FAILS_PER_USER:
            wait = max(wait, ttl_user / 1000)
        return max(wait, 0.0)

    async def login_failed(self, ip: str, name: str) -> None:
        async with self.registry.guard("console_limit"):
            async with self.redis.pipeline(transaction=False) as p:
                for key in (self.fail_key("ip", ip), self.fail_key("user", name[:64])):
                    p.incr(key)
                    p.expire(key, FAIL_WINDOW, nx=True)
                await p.execute()

    async def login_succeeded(self, name: str) -> None:
        async with self.registry.guard("console_limit"):
            await self.redis.delete(self.fail_key("user", name))

    # ----------------------------------------------------------------- audit
    async def audit(self, user: str, action: str, detail: str, source: str,
                    ok: bool = True) -> None:
        entry = AuditEntry(time.time(), user, action, detail[:500], source, ok)
        async with self.registry.guard("console_audit"):
            async with self.redis.pipeline(transaction=False) as p:
                p.lpush(self.audit_key, orjson.dumps(entry.to_json()))
                p.ltrim(self.audit_key, 0, AUDIT_MAX - 1)
                await p.execute()

    async def audit_log(self, count: int = 200) -> list[AuditEntry]:
        async with self.registry.guard("console_audit"):
            raw: list[Any] = await self.redis.lrange(self.audit_key, 0, max(1, count) - 1)
        out = []
        for blob in raw:
            try:
                d = orjson.loads(blob)
                out.append(AuditEntry(float(d["t"]), str(d["user"]), str(d["action"]),
                                      str(d["detail"]), str(d["source"]), bool(d["ok"])))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return out
