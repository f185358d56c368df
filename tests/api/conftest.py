"""Fixtures for the API tests: the real app on the test Redis, in-process or on a real port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from streamward.api.config import Settings
from streamward.api.main import create_app
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.server import RedisServer, free_port
from tests.api.helpers import ADMIN_TOKEN, RunnerSide

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(redis_server: RedisServer) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_server.url,
            "admin_token": ADMIN_TOKEN,
            "start_timeout_s": 10.0,
            # short slices and refreshes keep the tests quick; production uses 1 s / 10 s
            "tail_block_ms": 100,
            "attach_refresh_s": 0.5,
            "sse_keepalive_s": 0.5,
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
async def app(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[FastAPI]:
    # redis_client flushes the database first
    async with running_app(settings) as a:
        yield a


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def streams(redis_client: aioredis.Redis, keys: Keys) -> Streams:
    return Streams(redis_client, keys)


@pytest.fixture
async def runner(client: httpx.AsyncClient, store: LeaseStore, streams: Streams) -> RunnerSide:
    side = RunnerSide(client, store, streams, "replica-a")
    await side.register()
    return side


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """The app under uvicorn on a real port (streams, disconnects, two instances)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def live_url(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> AsyncIterator[str]:
    """A live instance whose detached invokes answer at once (start timeout 0)."""
    async with live_server(make_settings(start_timeout_s=0)) as url:
        yield url


@pytest.fixture
def no_start_wait(app: FastAPI) -> None:
    """Detached invokes answer ``queued`` at once (for tests that drive runs themselves)."""
    app.state.sw.settings.start_timeout_s = 0
