"""The API across a Redis failover: failover errors are 503, and a retried invoke whose input
landed while asking for an owner failed asks again (found by tests/scale on a real Cluster)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import ClusterDownError, ConnectionError, ReadOnlyError, TryAgainError

from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import assert_problem


async def test_a_retry_after_a_failed_notification_asks_for_an_owner_again(
    make_settings: SettingsFactory,
    redis_client: aioredis.Redis,
    streams: Streams,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"input": {"text": "x"}, "mode": "detached", "idempotency_key": "k-1"}
    publish = Streams.publish_work
    calls: list[str] = []

    async def failing_once(
        self: Streams, ref: str, reason: str, session_type: str | None = None
    ) -> str:
        calls.append(ref)
        if len(calls) == 1:  # the work queue's node is failing over
            raise ConnectionError("Error 111 connecting to the work queue's master")
        return await publish(self, ref, reason, session_type)

    monkeypatch.setattr(Streams, "publish_work", failing_once)
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as c:
        first = await c.post("/v1/sessions/s1/invoke", json=body)
        assert_problem(first, 503, "redis_unavailable")
        sk = streams.keys.session("default", "s1")
        assert await streams.pending(sk) == 1  # the input did land
        assert await streams.work_backlog() == 0  # but nobody was asked
        again = await c.post("/v1/sessions/s1/invoke", json=body)
        assert again.status_code == 202 and again.json()["status"] == "queued"
        assert await streams.pending(sk) == 1  # still one input: the retry is idempotent
        work = await streams.read_work("test-consumer", 10, 100)
        assert [w.session_ref for w in work] == ["default/s1"]


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
)
async def test_failover_errors_are_503_not_500(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def boom(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(app.state.sw.store, "enqueue", boom)
    async with asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
    assert_problem(r, 503, "redis_unavailable")
    assert r.headers["retry-after"]
