"""Shared fixtures. Integration tests get a private redis-server on a free port
(or LEADSYNC_TEST_REDIS_URL), flushed before each test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    external = os.environ.get("LEADSYNC_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of the private server (flushed), closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()
