from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Cluster, RedisServer, new_prefix, redis_server


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
