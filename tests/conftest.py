"""Shared fixtures: one real redis-server per test session, flushed between tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def store(redis_client: aioredis.Redis, keys: Keys) -> LeaseStore:
    return LeaseStore(redis_client, keys)


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[Fleet]:
    """A process fleet (API instances, runners) on a flushed test Redis; all stopped after."""
    import redis as syncredis

    c = syncredis.Redis.from_url(redis_server.url)
    c.flushall()
    c.close()
    f = Fleet(redis_server.url)
    try:
        yield f
    finally:
        f.stop()
