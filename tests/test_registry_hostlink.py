"""Inbox messages between processes of one host skip Redis; anything else still goes through it."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any, ClassVar

from hubbub import metrics
from hubbub.contracts import Contract, contract
from registry.hostlink import link_dir


@contract
class Note(Contract):
    TYPE: ClassVar[str] = "test.note"
    VERSION: ClassVar[int] = 1
    n: int


def _direct() -> float:
    value: float = metrics.INBOX_DIRECT._value.get()
    return value


async def test_same_host_direct_other_hosts_and_gone_through_redis(make: Any) -> None:
    a, b, c = await make(host="h1"), await make(host="h1"), await make(host="h2")
    got: list[tuple[int, str]] = []

    async def note(msg: Note, sender: str) -> None:
        got.append((msg.n, sender))

    for reg in (b, c):
        reg.handle(Note, note)
    before = _direct()
    # Same host: straight to the process. A burst beyond what its socket queues takes Redis
    # from there on (for a while), so the messages still arrive in order.
    for i in range(40):
        assert await a.send(b.id, Note(i))
        if i == 4:
            await asyncio.sleep(0.05)
    direct = _direct() - before
    assert 5 <= direct < 40
    # Another host: through its Redis inbox.
    assert await a.send(c.id, Note(100))
    assert _direct() - before == direct
    for _ in range(100):
        if len(got) == 41:
            break
        await asyncio.sleep(0.02)
    assert [n for n, _ in got if n < 100] == list(range(40))
    assert (100, a.id) in got
    # The link directory is this user's alone.
    mode = os.lstat(link_dir()).st_mode
    assert stat.S_ISDIR(mode) and not mode & (stat.S_IRWXG | stat.S_IRWXO)
    # A process that is gone (its socket closed) is not reached directly: Redis says nobody
    # listens there either.
    await b.close()
    assert not await a.send(b.id, Note(7))
    assert _direct() - before == direct
