from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, RedisServer, new_prefix, redis_server

from registry import Registry


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests isolate themselves by key prefix."""
    with redis_server() as srv:
        yield srv


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture
def cluster(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url, prefix, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


MakeRegistry = Callable[..., Coroutine[Any, Any, Registry]]


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[MakeRegistry]:
    """Started registries (``await make(role, host, ttl=, url=)``), closed after the test."""
    made: list[Registry] = []

    async def factory(role: str = "gateway", host: str = "h1", ttl: float = 1.5,
                      url: str = redis_url) -> Registry:
        reg = Registry(url, prefix, role, host, ttl=ttl)
        made.append(reg)
        await reg.start()
        assert await reg.wait_ready(5)
        return reg

    yield factory
    for reg in made:
        await reg.close()
