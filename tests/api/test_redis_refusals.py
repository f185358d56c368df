"""Redis refusing writes (maxmemory with noeviction, MISCONF, ...) is a 503 with Retry-After on
every route and makes /readyz not ready, never a 500; a real redis-server is filled for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import OutOfMemoryError, ResponseError

from streamward.lua.errors import write_refusal
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.server import RedisServer
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, RunnerSide, assert_problem


@pytest.fixture(scope="module")
def full_redis() -> Iterator[RedisServer]:
    """A redis-server of its own (the shared one must stay writable) with a small maxmemory."""
    server = RedisServer(
        extra_args=["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]
    ).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def full_client(full_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(full_redis.url, decode_responses=True)
    await client.config_set("maxmemory", "8mb")
    await client.flushall()
    try:
        yield client
    finally:
        await client.config_set("maxmemory", "0")
        await client.flushall()
        await client.aclose()


async def fill(client: aioredis.Redis) -> int:
    """Write until even a tiny write is refused; returns the keys written."""
    n = 0
    for size in (64 * 1024, 4096, 256, 16, 1):
        while True:
            try:
                await client.set(f"filler:{size}:{n}", b"x" * size)
            except OutOfMemoryError:
                break
            n += 1
    # right at the limit, memory freed by a client buffer or an expiring key lets one small
    # write through now and then; a limit 1 MiB under what is used keeps refusing
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", str(used - 1024 * 1024))
    return n


async def test_a_full_redis_is_503_with_retry_after_and_not_ready(
    make_settings: SettingsFactory, full_redis: RedisServer, full_client: aioredis.Redis
) -> None:
    keys = Keys()
    store, streams = LeaseStore(full_client, keys), Streams(full_client, keys)
    settings = make_settings(redis_url=full_redis.url, start_timeout_s=0)
    async with running_app(settings) as app, asgi_client(app) as c:
        runner = RunnerSide(c, store, streams, "replica-a")
        await runner.register()
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached", "input": 1})
        assert r.status_code == 202, r.text
        [item] = await runner.wait_inbox("s1")
        token = await runner.claim("s1")
        route = {
            "route_id": "gh",
            "source": "github",
            "on": ["push"],
            "session": {"key_expr": "k"},
        }
        assert (await c.post("/admin/routes", json=route, headers=ADMIN)).status_code == 201
        assert (await c.get("/readyz")).status_code == 200

        assert await fill(full_client) > 0
        # every kind of write: the public API, the runners' ingest, admin
        refused = [
            await c.post("/v1/sessions/s2/invoke", json={"mode": "detached", "input": 2}),
            await c.post("/v1/sessions/s1/invoke", json={"mode": "detached", "input": 3}),
            await c.post("/v1/sessions/s1/cancel", json={"run_id": item.run_id}),
            # a routed event: no route delivered, so the whole delivery is retryable
            await c.post("/v1/events/github", json={"type": "push", "payload": {"k": "a"}}),
            await c.post(
                "/admin/sessions/transcripts/ingest",
                headers=ADMIN,
                json={
                    "project": "default",
                    "session_id": "s1",
                    "run_id": item.run_id,
                    "replica_id": "replica-a",
                    "token": token,
                    "entries": [
                        {
                            "seq": 1,
                            "type": "run.started",
                            "data": {"replica_id": "replica-a", "attempt": 1, "input": None},
                        }
                    ],
                },
            ),
        ]
        for r in refused:
            body = assert_problem(r, 503, "redis_unavailable")
            assert body["reason"] == "out_of_memory"
            assert int(r.headers["retry-after"]) >= 1
        ready = await c.get("/readyz")
        body = assert_problem(ready, 503, "not_ready")
        assert body["reason"] == "out_of_memory" and "refuses writes" in body["detail"]
        assert (await c.get("/livez")).status_code == 200  # alive: no restart for a full Redis

        await full_client.config_set("maxmemory", "0")
        r = await c.post("/v1/sessions/s2/invoke", json={"mode": "detached", "input": 2})
        assert r.status_code == 202, r.text
        assert (await c.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."),
            "persistence_failing",
        ),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "not_enough_replicas"),
        (
            ResponseError(
                "Error running script (call to f_1): @user_script:1: -OOM command not allowed"
            ),
            "out_of_memory",
        ),
    ],
)
async def test_other_write_refusals_are_503(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str
) -> None:
    async def boom(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(app.state.sw.store, "enqueue", boom)
    async with asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
    assert assert_problem(r, 503, "redis_unavailable")["reason"] == reason
    assert r.headers["retry-after"]


async def test_a_bug_shaped_response_error_stays_a_500(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*_: Any, **__: Any) -> Any:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    monkeypatch.setattr(app.state.sw.store, "enqueue", boom)
    async with asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
    assert_problem(r, 500, "internal_error")


def test_write_refusal_reads_the_error_code_not_any_mention() -> None:
    assert write_refusal(OutOfMemoryError("command not allowed")) == "out_of_memory"
    assert write_refusal(ResponseError("ERR unknown key OOM-ish")) is None
    assert write_refusal(ValueError("OOM ")) is None
