"""Quotas through the real app on a real Redis: 429 inbox_full / rate_limited with Retry-After,
nothing half-enqueued, refunds, per-project overrides, the usage endpoint, metrics, events."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from streamward.lua.keys import Keys, SessionKeys
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, assert_problem

pytestmark = pytest.mark.usefixtures("redis_client")  # a flushed database per test
DETACHED: dict[str, Any] = {"mode": "detached", "input": {"text": "hi"}}


def sk(session_id: str, project: str = "default") -> SessionKeys:
    return Keys().session(project, session_id)


async def snapshot(redis_client: aioredis.Redis, s: SessionKeys) -> tuple[Any, ...]:
    """What a refused invoke must leave as it was: inbox, meta, idempotency keys."""
    idem = sorted(await redis_client.keys(s.idempotency("*")))
    return (await redis_client.xrange(s.inbox), await redis_client.hgetall(s.meta), idem)


async def invoke(client: httpx.AsyncClient, session_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/sessions/{session_id}/invoke", json={**DETACHED, **body})


async def test_inbox_full_at_exactly_the_limit_writes_nothing(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    async with (
        running_app(make_settings(start_timeout_s=0, max_pending_inputs=3)) as app,
        asgi_client(app) as client,
    ):
        for n in range(3):
            r = await invoke(client, "s1", idempotency_key=f"k{n}")
            assert r.status_code == 202, r.text
        before = await snapshot(redis_client, sk("s1"))
        r = await invoke(client, "s1", idempotency_key="k-over")
        body = assert_problem(r, 429, "inbox_full")
        assert r.headers["Retry-After"] == "1"
        assert (body["pending"], body["limit"], body["reason"]) == (3, 3, "inbox_full")
        assert await snapshot(redis_client, sk("s1")) == before
        assert await redis_client.exists(sk("s1").idempotency("k-over")) == 0
        # the stream mode is refused the same way, before any response starts
        r = await client.post("/v1/sessions/s1/invoke", json={"input": 1})
        assert_problem(r, 429, "inbox_full")
        # an idempotent retry of an input already appended still gets its run
        r = await invoke(client, "s1", idempotency_key="k1")
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert await snapshot(redis_client, sk("s1")) == before
        # another session is not affected
        assert (await invoke(client, "s2")).status_code == 202
        usage = (await client.get("/admin/projects/default/usage", headers=ADMIN)).json()
        assert usage["rejections"]["inbox_full"] == 2
        assert usage["max_pending_inputs"] == 3


async def test_rate_limited_after_the_burst(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    # a refill far slower than the test: the burst passes, the next is refused
    settings = make_settings(start_timeout_s=0, invokes_per_s=0.01, invokes_burst=2)
    async with running_app(settings) as app, asgi_client(app) as client:
        assert (await invoke(client, "a")).status_code == 202
        assert (await invoke(client, "b")).status_code == 202
        r = await invoke(client, "c")
        body = assert_problem(r, 429, "rate_limited")
        assert body["reason"] == "invokes_per_s"
        # one token at 0.01 per second: about 100 s, from the bucket, in whole seconds
        assert 90 <= int(r.headers["Retry-After"]) <= 100
        assert 90_000 <= body["retry_after_ms"] <= 100_000
        assert await redis_client.exists(sk("c").meta, sk("c").inbox) == 0
        usage = (await client.get("/admin/projects/default/usage", headers=ADMIN)).json()
        assert usage["invokes"]["per_s"] == 0.01 and usage["invokes"]["burst"] == 2
        assert usage["invokes"]["tokens_left"] < 1
        assert usage["rejections"]["invokes_per_s"] == 1


async def test_a_refused_enqueue_gives_its_token_back(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(start_timeout_s=0, invokes_per_s=0.01, invokes_burst=2)
    async with running_app(settings) as app, asgi_client(app) as client:
        assert (await invoke(client, "a")).status_code == 202  # 1 token left
        for _ in range(3):  # busy: the enqueue refuses, the token comes back each time
            assert_problem(await invoke(client, "a", multitask="reject"), 409, "session_busy")
        for _ in range(3):
            assert_problem(await invoke(client, "a", type="other"), 409, "type_mismatch")
        assert (await invoke(client, "b")).status_code == 202  # the last token
        assert_problem(await invoke(client, "c"), 429, "rate_limited")


async def test_live_sessions_limit_refuses_a_new_session_not_a_warm_invoke(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    async with (
        running_app(make_settings(start_timeout_s=0, max_live_sessions=2)) as app,
        asgi_client(app) as client,
    ):
        assert (await invoke(client, "a")).status_code == 202
        assert (await invoke(client, "b")).status_code == 202
        r = await invoke(client, "c", idempotency_key="k")
        body = assert_problem(r, 429, "rate_limited")
        assert body["reason"] == "live_sessions" and body["limit"] == 2
        assert body["live_sessions"] == 2
        assert r.headers["Retry-After"] == "1"
        assert await redis_client.exists(sk("c").meta, sk("c").inbox) == 0
        assert await redis_client.exists(sk("c").idempotency("k")) == 0
        assert (await invoke(client, "a")).status_code == 202  # warm: passes
        usage = (await client.get("/admin/projects/default/usage", headers=ADMIN)).json()
        assert (usage["live_sessions"], usage["max_live_sessions"]) == (2, 2)
        # a deleted session is no longer live: room for a new one
        assert (await client.delete("/v1/sessions/b")).status_code == 200
        assert (await invoke(client, "c")).status_code == 202
        assert_problem(await invoke(client, "b"), 429, "rate_limited")  # revival = new
        usage = (await client.get("/admin/projects/default/usage", headers=ADMIN)).json()
        assert usage["live_sessions"] == 2
        assert usage["rejections"]["live_sessions"] == 2


async def test_no_project_limit_no_admission_and_no_count(
    make_settings: SettingsFactory,
) -> None:
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as client:
        for s in ("a", "b", "a"):
            assert (await invoke(client, s)).status_code == 202
        usage = (await client.get("/admin/projects/default/usage", headers=ADMIN)).json()
        assert usage["live_sessions"] is None  # not counted without a limit
        assert usage["max_live_sessions"] == 0 and usage["invokes"]["tokens_left"] is None
        assert usage["max_pending_inputs"] == 1000  # the default


async def test_per_project_overrides(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        start_timeout_s=0,
        api_tokens={"tok-a": "team-a", "tok-b": "team-b"},
        quotas_by_project={"team-a": {"max_pending_inputs": 1, "max_live_sessions": 1}},
        max_live_sessions=5,
    )
    a = {"Authorization": "Bearer tok-a"}
    b = {"Authorization": "Bearer tok-b"}
    async with running_app(settings) as app, asgi_client(app) as client:
        assert (await client.post("/v1/sessions/s/invoke", json=DETACHED, headers=a)).status_code
        r = await client.post("/v1/sessions/s/invoke", json=DETACHED, headers=a)
        assert_problem(r, 429, "inbox_full")
        r = await client.post("/v1/sessions/t/invoke", json=DETACHED, headers=a)
        assert assert_problem(r, 429, "rate_limited")["reason"] == "live_sessions"
        for _ in range(3):  # team-b keeps the defaults: 1000 pending, 5 live sessions
            r = await client.post("/v1/sessions/s/invoke", json=DETACHED, headers=b)
            assert r.status_code == 202, r.text
        usage_a = (await client.get("/admin/projects/team-a/usage", headers=ADMIN)).json()
        usage_b = (await client.get("/admin/projects/team-b/usage", headers=ADMIN)).json()
        assert (usage_a["max_pending_inputs"], usage_a["max_live_sessions"]) == (1, 1)
        assert (usage_b["max_pending_inputs"], usage_b["max_live_sessions"]) == (1000, 5)
        assert (usage_a["live_sessions"], usage_b["live_sessions"]) == (1, 1)


async def test_usage_endpoint_needs_the_admin_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/admin/projects/default/usage"), 401, "missing_token")
    r = await client.get("/admin/projects/bad%20id/usage", headers=ADMIN)
    assert_problem(r, 422, "invalid_id")
    r = await client.get("/admin/projects/nobody/usage", headers=ADMIN)
    assert r.status_code == 200 and r.json()["live_sessions"] is None  # no limit: not counted


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def test_metrics_count_rejections_by_reason(make_settings: SettingsFactory) -> None:
    settings = make_settings(start_timeout_s=0, max_pending_inputs=1)
    async with running_app(settings) as app, asgi_client(app) as client:
        await invoke(client, "s")
        assert_problem(await invoke(client, "s"), 429, "inbox_full")
        got = _samples((await client.get("/metrics")).text)
        rejected = got["streamward_api_quota_rejections_total"]
        assert [(s.labels, s.value) for s in rejected] == [({"reason": "inbox_full"}, 1.0)]
        assert "streamward_project_live_sessions" not in got  # no project names by default


async def test_metrics_by_project_when_asked(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        start_timeout_s=0,
        quota_metrics_by_project=True,
        invokes_per_s=0.01,
        invokes_burst=1,
        max_live_sessions=10,
    )
    async with running_app(settings) as app, asgi_client(app) as client:
        await invoke(client, "s")
        assert_problem(await invoke(client, "s"), 429, "rate_limited")
        got = _samples((await client.get("/metrics")).text)
        rejected = got["streamward_api_quota_rejections_total"]
        labels = {"reason": "invokes_per_s", "project": "default"}
        assert [(s.labels, s.value) for s in rejected] == [(labels, 1.0)]
        assert [s.value for s in got["streamward_project_live_sessions"]] == [1.0]
        limits = {s.labels["limit"]: s.value for s in got["streamward_project_quota_limit"]}
        assert limits["max_live_sessions"] == 10 and limits["invokes_burst"] == 1
        assert got["streamward_project_invoke_tokens"][0].value < 1


# -- events ------------------------------------------------------------------------------------

ROUTE: dict[str, Any] = {
    "route_id": "gh",
    "source": "github",
    "on": ["issue_comment"],
    "session": {"key_expr": "issue.number"},
    "input_expr": "comment.body",
}
ONCE_ROUTE: dict[str, Any] = {
    "route_id": "gh-once",
    "source": "github",
    "on": ["issue_comment"],
    "input_expr": "comment.body",
}


def comment(pr: int, text: str = "hi") -> dict[str, Any]:
    return {
        "type": "issue_comment",
        "payload": {"issue": {"number": pr}, "comment": {"body": text}},
    }


async def test_events_answer_429_when_quotas_refuse_every_route(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    async with running_app(make_settings(max_pending_inputs=1)) as app, asgi_client(app) as client:
        r = await client.post("/admin/routes", json=ROUTE, headers=ADMIN)
        assert r.status_code == 201, r.text
        r = await client.post("/v1/events/github", json=comment(7))
        assert r.status_code == 202 and r.json()["sessions"][0]["action"] == "started"
        session_id = r.json()["sessions"][0]["session_id"]
        before = await snapshot(redis_client, sk(session_id))
        r = await client.post("/v1/events/github", json=comment(7, "again"))
        assert_problem(r, 429, "inbox_full")
        assert r.headers["Retry-After"] == "1"
        assert await snapshot(redis_client, sk(session_id)) == before
        # another key still delivers
        r = await client.post("/v1/events/github", json=comment(8))
        assert r.status_code == 202 and r.json()["sessions"][0]["action"] == "started"


async def test_events_keep_202_when_another_route_delivered(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    # two routes, one live session allowed: the keyed route's session exists, a sessionless
    # route's fresh session is refused; the delivery is 202 with that route rejected
    async with running_app(make_settings(max_live_sessions=1)) as app, asgi_client(app) as client:
        await client.post("/admin/routes", json=ROUTE, headers=ADMIN)
        r = await client.post("/v1/events/github", json=comment(7))
        assert r.status_code == 202
        await client.post("/admin/routes", json=ONCE_ROUTE, headers=ADMIN)
        r = await client.post("/v1/events/github", json=comment(7, "both"))
        assert r.status_code == 202, r.text
        by_route = {s["route_id"]: s for s in r.json()["sessions"]}
        assert by_route["gh"]["action"] == "queued"
        refused = by_route["gh-once"]
        assert refused["action"] == "rejected"
        assert refused["error"]["code"] == "rate_limited"
        # the refused sessionless session left nothing behind, not even its meta
        once = [k for k in await redis_client.keys("sw:{default/gh-once.once.*") if k]
        assert once == []


async def test_cluster_path_overlaps_the_admission_with_the_pending_index(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    # LeaseStore.cluster picks the Cluster code path (the slot rules themselves are checked
    # by tests/lua/test_static.py); the answers must be those of the standalone path
    settings = make_settings(start_timeout_s=0, invokes_per_s=0.01, invokes_burst=1)
    async with running_app(settings) as app, asgi_client(app) as client:
        app.state.sw.store.cluster = True
        assert (await invoke(client, "a")).status_code == 202
        assert await redis_client.zscore(Keys().pending, "default/a") is not None
        assert await redis_client.xlen(sk("a").inbox) == 1
        assert_problem(await invoke(client, "b"), 429, "rate_limited")
        assert await redis_client.exists(sk("b").meta, sk("b").inbox) == 0


async def test_python_client_reports_the_refusal_and_retry_after(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    from streamward.client import AsyncStreamwardClient, StreamwardAPIError
    from tests.api.conftest import live_server

    settings = make_settings(start_timeout_s=0, invokes_per_s=0.01, invokes_burst=1)
    async with live_server(settings) as url, AsyncStreamwardClient(url) as client:
        await client.invoke("s1", "hi")
        with pytest.raises(StreamwardAPIError) as err:
            await client.invoke("s1", "again")
        assert (err.value.status, err.value.code) == (429, "rate_limited")
        assert err.value.retry_after_s is not None and err.value.retry_after_s >= 90
        assert err.value.problem["reason"] == "invokes_per_s"


def test_metric_labels_name_the_projects_of_hashed_tokens() -> None:
    from streamward.api.config import Settings
    from streamward.api.quotas import known_projects

    digest = hashlib.sha256(b"team-h-token").hexdigest()
    settings = Settings.model_validate(
        {
            "tokens": [{"sha256": digest, "project": "team-h", "scopes": ["sessions:run"]}],
            "api_tokens": {"legacy": "team-l"},
            "quotas_by_project": {"team-q": {"invokes_per_s": 5}},
        }
    )
    assert known_projects(settings) == ["team-h", "team-l", "team-q"]
    assert known_projects(Settings()) == ["default"]  # no tokens: every call is in default
