"""Event routing through the real app: route CRUD, key extraction, generations, retention."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI

from streamward.lua.keys import Keys
from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, assert_problem

PR_ROUTE: dict[str, Any] = {
    "route_id": "gh-pr",
    "source": "github",
    "on": ["issue_comment", "pull_request_review_comment"],
    "filter": "action == 'created'",
    "session": {"key_expr": "issue.pull_request.html_url", "idle_timeout_seconds": 300},
    "input_expr": "{text: comment.body, author: comment.user.login}",
}
CHAT_ROUTE: dict[str, Any] = {
    "route_id": "slack",
    "source": "slack",
    "on": ["message"],
    "session": {"key_template": "chat"},
}


def pr_comment(pr: int | None, body: str = "lgtm", action: str = "created") -> dict[str, Any]:
    issue: dict[str, Any] = {"number": pr or 7}
    if pr is not None:
        issue["pull_request"] = {"html_url": f"https://github.com/o/r/pull/{pr}"}
    return {
        "type": "issue_comment",
        "payload": {
            "action": action,
            "issue": issue,
            "comment": {"body": body, "user": {"login": "ada"}},
        },
    }


def chat_msg(
    chat: str, user: str, thread: str | None = None, kind: str = "group"
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "chat": {"id": chat, "type": kind},
        "user": {"id": user},
        "text": "hi",
    }
    if thread is not None:
        payload["thread"] = {"id": thread}
    return {"type": "message", "payload": payload}


async def drain(redis_client: aioredis.Redis, session_id: str, project: str = "default") -> None:
    """What a runner does when the session's runs end: its inbox empties (completeInput)."""
    await redis_client.delete(Keys().session(project, session_id).inbox)


async def add_route(client: httpx.AsyncClient, route: dict[str, Any]) -> None:
    r = await client.post("/admin/routes", json=route, headers=ADMIN)
    assert r.status_code in (200, 201), r.text


async def test_route_crud(client: httpx.AsyncClient) -> None:
    r = await client.post("/admin/routes", json=PR_ROUTE, headers=ADMIN)
    assert r.status_code == 201 and r.json()["route_id"] == "gh-pr"
    r = await client.post(
        "/admin/routes", json={**PR_ROUTE, "on": ["issue_comment"]}, headers=ADMIN
    )
    assert r.status_code == 200  # replaced
    got = (await client.get("/admin/routes/gh-pr", headers=ADMIN)).json()
    assert got["on"] == ["issue_comment"] and got["session"]["on_owner_death"] == "restart"
    listed = (await client.get("/admin/routes", headers=ADMIN)).json()["items"]
    assert [x["route_id"] for x in listed] == ["gh-pr"]
    assert (await client.delete("/admin/routes/gh-pr", headers=ADMIN)).status_code == 200
    assert_problem(await client.get("/admin/routes/gh-pr", headers=ADMIN), 404, "route_not_found")
    assert_problem(await client.get("/admin/routes"), 401, "missing_token")


async def test_invalid_expressions_are_refused_at_save_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    for field, route in [
        ("filter", {**PR_ROUTE, "filter": "action =="}),
        ("session.key_expr", {**PR_ROUTE, "session": {"key_expr": "issue.[[["}}),
        ("filter", {**PR_ROUTE, "filter": "contains_ci(comment.body, 'x')"}),
        ("filter", {**PR_ROUTE, "filter": "matches(comment.body, '(a+)+$')"}),
        ("input_expr", {**PR_ROUTE, "input_expr": "{text: }"}),
    ]:
        body = assert_problem(
            await client.post("/admin/routes", json=route, headers=ADMIN), 422, "invalid_expression"
        )
        assert body["field"] == field and field in body["detail"]
    both = {**PR_ROUTE, "session": {"key_expr": "a", "key_template": "chat"}}
    assert_problem(
        await client.post("/admin/routes", json=both, headers=ADMIN), 422, "invalid_route"
    )
    bad_timeout = {**PR_ROUTE, "session": {"key_expr": "a", "idle_timeout_seconds": 5}}
    assert_problem(
        await client.post("/admin/routes", json=bad_timeout, headers=ADMIN), 422, "validation_error"
    )
    assert (await client.get("/admin/routes", headers=ADMIN)).json()["items"] == []


async def test_pr_comments_reach_one_session_per_pull_request(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    await add_route(client, PR_ROUTE)
    first = (await client.post("/v1/events/github", json=pr_comment(1, "first"))).json()
    second = (await client.post("/v1/events/github", json=pr_comment(1, "second"))).json()
    other = (await client.post("/v1/events/github", json=pr_comment(2))).json()
    assert (first["matched"], first["runs_started"], first["events_queued"]) == (1, 1, 0)
    assert (second["runs_started"], second["events_queued"]) == (0, 1)
    s1, s2, s3 = first["sessions"][0], second["sessions"][0], other["sessions"][0]
    assert s1["action"] == "started" and s2["action"] == "queued" and s3["action"] == "started"
    assert s1["session_id"] == s2["session_id"] != s3["session_id"]
    assert s1["session_key"] == "https://github.com/o/r/pull/1"
    inbox = await streams.read_inbox(keys.session("default", s1["session_id"]))
    assert [i.input for i in inbox] == [
        {"text": "first", "author": "ada"},
        {"text": "second", "author": "ada"},
    ]
    assert [i.run_id for i in inbox] == [s1["run_id"], s2["run_id"]]
    # the session is visible like any other, with its route and key
    got = (await client.get(f"/v1/sessions/{s1['session_id']}")).json()
    assert (got["route_id"], got["session_key"], got["generation"]) == (
        "gh-pr",
        s1["session_key"],
        1,
    )


async def test_filtered_no_key_and_unmatched_events(client: httpx.AsyncClient) -> None:
    await add_route(client, PR_ROUTE)
    filtered = (await client.post("/v1/events/github", json=pr_comment(1, action="deleted"))).json()
    [only] = filtered["sessions"]
    assert (only["route_id"], only["action"], only["session_id"]) == ("gh-pr", "filtered", None)
    no_key = (await client.post("/v1/events/github", json=pr_comment(None))).json()
    assert no_key["sessions"][0]["action"] == "no_key" and no_key["runs_started"] == 0
    odd = (
        await client.post("/v1/events/github", json={"type": "issue_comment", "payload": 5})
    ).json()
    assert odd["sessions"][0]["action"] in ("filtered", "no_key")
    unmatched = (await client.post("/v1/events/gitlab", json=pr_comment(1))).json()
    assert unmatched == {
        "matched": 0,
        "runs_started": 0,
        "events_queued": 0,
        "routes_failed": 0,
        "duplicate": False,
        "sessions": [],
    }
    assert_problem(await client.post("/v1/events/git%20hub", json=pr_comment(1)), 422, "invalid_id")


async def test_chat_key_template(client: httpx.AsyncClient) -> None:
    await add_route(client, CHAT_ROUTE)
    per_user = {
        **CHAT_ROUTE,
        "route_id": "slack-iso",
        "session": {"key_template": "chat", "isolation": "per_user"},
    }
    await add_route(client, per_user)

    async def keys_of(event: dict[str, Any]) -> dict[str, str | None]:
        r = (await client.post("/v1/events/slack", json=event)).json()
        return {s["route_id"]: s.get("session_key") for s in r["sessions"]}

    a = await keys_of(chat_msg("C1", "ann", thread="T1"))
    b = await keys_of(chat_msg("C1", "bob", thread="T1"))
    assert a["slack"] == b["slack"] == "group:C1:T1"  # a thread is shared (Hermes' default)
    # per user in the group itself (group_sessions_per_user defaults to true)
    assert (await keys_of(chat_msg("C1", "ann")))["slack"] == "group:C1:ann"
    # a route stored with the legacy isolation keeps the legacy keys
    assert a["slack-iso"] == "chat:C1:thread:T1:user:ann" != b["slack-iso"]
    dm = await keys_of(chat_msg("D9", "ann", kind="dm"))
    assert dm == {"slack": "dm:D9", "slack-iso": "dm:D9"}
    assert (await keys_of(chat_msg("D9", "ann", thread="T2", kind="dm")))["slack"] == "dm:D9:T2"


async def test_burst_for_a_new_key_makes_one_session_in_arrival_order(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    await add_route(client, PR_ROUTE)
    results = await asyncio.gather(
        *[client.post("/v1/events/github", json=pr_comment(5, f"c{i}")) for i in range(50)]
    )
    sessions = [r.json()["sessions"][0] for r in results]
    assert sorted(s["action"] for s in sessions).count("started") == 1
    assert len({s["session_id"] for s in sessions}) == 1
    inbox = await streams.read_inbox(keys.session("default", sessions[0]["session_id"]), count=100)
    assert len(inbox) == 50 and len({i.run_id for i in inbox}) == 50


async def test_session_timeout_and_manual_reset_open_new_generations(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    route = {**PR_ROUTE, "session": {**PR_ROUTE["session"], "session_timeout_seconds": 3600}}

    async def post(app: FastAPI, event: dict[str, Any]) -> dict[str, Any]:
        async with asgi_client(app) as c:
            r = await c.post("/v1/events/github", json=event)
            assert r.status_code == 202, r.text
            body: dict[str, Any] = r.json()["sessions"][0]
            return body

    async with (
        running_app(make_settings()) as now,
        running_app(make_settings(clock_offset_ms=3600_000 + 1000)) as later,
    ):
        async with asgi_client(now) as c:
            await add_route(c, route)
        g1 = await post(now, pr_comment(1))
        await drain(redis_client, g1["session_id"])  # no runner here: as if its run ended
        g2 = await post(later, pr_comment(1))
        assert g2["action"] == "started" and g2["session_id"] != g1["session_id"]
        async with asgi_client(now) as c:
            old = (await c.get(f"/v1/sessions/{g1['session_id']}")).json()
            assert (old["status"], old["reason"]) == ("expired", "timeout")
            assert old["delete_after"] is not None
            assert (await c.get(f"/v1/sessions/{g1['session_id']}/transcript")).status_code == 200
            # retention: every key of the old generation now expires
            ttl = await redis_client.pttl(Keys().session("default", g1["session_id"]).meta)
            assert 0 < ttl <= 30 * 86_400_000
            # manual reset through the admin API
            r = await c.post(
                "/admin/routes/gh-pr/reset",
                json={"session_key": "https://github.com/o/r/pull/1"},
                headers=ADMIN,
            )
            assert r.status_code == 200 and r.json()["session_id"] == g2["session_id"]
            assert r.json()["status"] == "reset_pending"
        await drain(redis_client, g2["session_id"])
        g3 = await post(now, pr_comment(1))
        assert g3["action"] == "started" and g3["session_id"] not in (
            g1["session_id"],
            g2["session_id"],
        )
        async with asgi_client(now) as c:
            old2 = (await c.get(f"/v1/sessions/{g2['session_id']}")).json()
            assert (old2["status"], old2["reason"]) == ("expired", "manual")


async def test_deleted_session_key_starts_a_new_generation(client: httpx.AsyncClient) -> None:
    await add_route(client, PR_ROUTE)
    g1 = (await client.post("/v1/events/github", json=pr_comment(3))).json()["sessions"][0]
    assert (await client.delete(f"/v1/sessions/{g1['session_id']}")).status_code == 200
    gone = (await client.get(f"/v1/sessions/{g1['session_id']}")).json()
    assert (gone["status"], gone["reason"]) == ("deleted", "manual") and gone["delete_after"]
    g2 = (await client.post("/v1/events/github", json=pr_comment(3))).json()["sessions"][0]
    assert g2["action"] == "started" and g2["session_id"] != g1["session_id"]
