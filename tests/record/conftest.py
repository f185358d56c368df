"""Fixtures of the record tests: one real PostgreSQL server per test session (a free port,
its own cluster in a temp dir), a fresh migrated database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record import migrate
from streamward.api.record.db import make_engine
from streamward.tools.pgserver import PostgresServer
from streamward.tools.server import RedisServer
from tests.api.conftest import SettingsFactory


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def database_url(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield pg_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database migrated to head."""
    eng = make_engine(database_url)
    await migrate.upgrade(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def make_settings(redis_server: RedisServer) -> SettingsFactory:
    """API settings on the test Redis (as tests/api's fixture of the same name)."""
    from streamward.api.config import Settings
    from tests.api.helpers import ADMIN_TOKEN

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_server.url,
            "admin_token": ADMIN_TOKEN,
            "tail_block_ms": 100,
        }
        return Settings(**{**base, **overrides})

    return make
