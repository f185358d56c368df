"""Routed session lifecycle through the real app on a real Redis: the seed's route as
written, idle resets, resets deferred while a generation is busy (and the boundary race),
reset reasons in the session, POST /v1/sessions/{id}/reset, Hermes keys."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

from streamward.lua.keys import Keys
from streamward.lua.routes import key_hash
from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, assert_problem
from tests.api.test_chatkeys import HERMES_CASES, chat_payload
from tests.api.test_routing_events import add_route, drain
from tests.api.test_sources import SECRET, gh_headers, put_source

# the OpenHands automation example from issue 15, verbatim
SEED_ROUTE = {
    "source": "github",
    "on": ["issue_comment.created", "pull_request.synchronize"],
    "filter": "icontains(comment.body, '@openhands')",
    "session": {
        "key_expr": "pull_request.number || issue.number",
        "idle_timeout_seconds": 600,
        "session_timeout_seconds": 7200,
        "on_sandbox_death": "restart",
    },
}


def github_issue_comment(number: int, body: str) -> dict[str, Any]:
    """An ``issue_comment`` delivery on a pull request, shaped like GitHub's."""
    user = {"login": "ada", "id": 1, "type": "User"}
    return {
        "action": "created",
        "issue": {
            "url": f"https://api.github.com/repos/o/r/issues/{number}",
            "html_url": f"https://github.com/o/r/pull/{number}",
            "number": number,
            "title": "Fix the flaky test",
            "user": user,
            "state": "open",
            "pull_request": {
                "url": f"https://api.github.com/repos/o/r/pulls/{number}",
                "html_url": f"https://github.com/o/r/pull/{number}",
            },
        },
        "comment": {"id": 99, "body": body, "user": user, "created_at": "2026-01-01T00:00:00Z"},
        "repository": {"id": 7, "name": "r", "full_name": "o/r", "private": False},
        "sender": user,
    }


async def test_seed_route_works_as_written(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    # the Check of issue 15: the seed's route posted verbatim, GitHub's raw signed deliveries
    await put_source(client, "github", kind="github", verification="github", secret=SECRET)
    r = await client.post("/admin/routes", json=SEED_ROUTE, headers=ADMIN)
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["session"]["on_owner_death"] == "restart" and saved["expr_root"] == "payload"
    assert (await client.post("/admin/routes", json=SEED_ROUTE, headers=ADMIN)).status_code == 200

    async def deliver(event: str, payload: dict[str, Any], delivery: str) -> httpx.Response:
        # as GitHub sends it: the raw payload, X-GitHub-Event, X-GitHub-Delivery, signed
        body = orjson.dumps(payload)
        return await client.post(
            "/v1/events/github", content=body, headers=gh_headers(body, delivery, event)
        )

    async def post(event: str, payload: dict[str, Any], delivery: str) -> dict[str, Any]:
        res = await deliver(event, payload, delivery)
        assert res.status_code == 202, res.text
        out: dict[str, Any] = res.json()["sessions"][0]
        return out

    comment_42 = github_issue_comment(42, "@OpenHands fix it")
    first_res = await deliver("issue_comment", comment_42, "gh-d-1")
    assert first_res.status_code == 202, first_res.text
    first = first_res.json()["sessions"][0]
    # issue_comment.created from the header + action; keyed by issue.number (no pull_request)
    assert (first["action"], first["session_key"]) == ("started", "42")
    assert first["session_id"] == f"{saved['route_id']}.{key_hash('42')}.1"
    sk = keys.session("default", first["session_id"])
    inbox = await streams.read_inbox(sk)
    assert [(i.run_id, i.input["type"]) for i in inbox] == [
        (first["run_id"], "issue_comment.created")
    ]
    assert inbox[0].input["payload"] == comment_42  # the run gets the event, payload as sent

    # GitHub's "Redeliver": the same X-GitHub-Delivery starts nothing, answers the first answer
    again_res = await deliver("issue_comment", comment_42, "gh-d-1")
    assert again_res.status_code == 200, again_res.text
    assert again_res.json() == {**first_res.json(), "duplicate": True}
    assert len(await streams.read_inbox(sk)) == 1

    ignored = await post("issue_comment", github_issue_comment(42, "thanks"), "gh-d-2")
    assert ignored["action"] == "filtered"
    sync = {"action": "synchronize", "number": 42, "pull_request": {"number": 42}}
    # a synchronize has no comment: icontains(null, ...) is false, as the seed intends
    assert (await post("pull_request", sync, "gh-d-3"))["action"] == "filtered"
    again = await post("issue_comment", github_issue_comment(42, "@openhands again"), "gh-d-4")
    assert (again["action"], again["session_id"]) == ("queued", first["session_id"])


async def post_event(app: FastAPI, event: dict[str, Any], source: str = "github") -> dict[str, Any]:
    async with asgi_client(app) as c:
        r = await c.post(f"/v1/events/{source}", json=event)
        assert r.status_code == 202, r.text
        body: dict[str, Any] = r.json()["sessions"][0]
        return body


def comment(number: int, body: str = "@openhands go") -> dict[str, Any]:
    return {"type": "issue_comment.created", "payload": github_issue_comment(number, body)}


async def test_idle_opens_a_new_generation_that_knows_why(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    route = {**SEED_ROUTE, "route_id": "oh"}
    async with (
        running_app(make_settings()) as now,
        running_app(make_settings(clock_offset_ms=599_000)) as almost,
        running_app(make_settings(clock_offset_ms=599_000 + 601_000)) as idle,
    ):
        async with asgi_client(now) as c:
            await add_route(c, route)
        g1 = await post_event(now, comment(1))
        await drain(redis_client, g1["session_id"])  # its run ended (no runner here)
        # 599 s later: not idle yet, and this event restarts the idle clock
        assert (await post_event(almost, comment(1)))["session_id"] == g1["session_id"]
        await drain(redis_client, g1["session_id"])
        g2 = await post_event(idle, comment(1))
        assert g2["action"] == "started" and g2["session_id"] != g1["session_id"]
        async with asgi_client(now) as c:
            new = (await c.get(f"/v1/sessions/{g2['session_id']}")).json()
            old = (await c.get(f"/v1/sessions/{g1['session_id']}")).json()
        assert (new["previous_session_id"], new["reset_reason"]) == (g1["session_id"], "idle")
        assert (old["status"], old["reason"]) == ("expired", "idle")
        meta_key = Keys().session("default", g2["session_id"]).meta
        reason = await redis_client.hget(meta_key, "reset_reason")
        assert reason in ("idle", b"idle")  # what the session host reads at activate


async def test_recent_run_activity_disproves_idle(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    route = {**SEED_ROUTE, "route_id": "oh"}
    async with (
        running_app(make_settings()) as now,
        running_app(make_settings(clock_offset_ms=601_000)) as later,
    ):
        async with asgi_client(now) as c:
            await add_route(c, route)
        g1 = await post_event(now, comment(1))
        await drain(redis_client, g1["session_id"])
        # the run wrote 60 s before "later" (a long run): not idle since the last event
        secs, _ = await redis_client.time()
        sk = Keys().session("default", g1["session_id"])
        await redis_client.hset(sk.meta, "updated_ms", int(secs) * 1000 + 541_000)
        same = await post_event(later, comment(1))
        assert (same["action"], same["session_id"]) == ("queued", g1["session_id"])


async def test_reset_waits_for_a_quiet_generation_and_the_boundary_burst_splits_cleanly(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, streams: Streams, keys: Keys
) -> None:
    route = {**SEED_ROUTE, "route_id": "oh"}
    async with (
        running_app(make_settings()) as now,
        running_app(make_settings(clock_offset_ms=7200_000 + 1000)) as late,
    ):
        async with asgi_client(now) as c:
            await add_route(c, route)
        g1 = await post_event(now, comment(1, "@openhands first"))
        # the timeout falls due while g1 still has pending input: a burst joins g1
        joined = await asyncio.gather(
            *[post_event(late, comment(1, f"@openhands a{i}")) for i in range(20)]
        )
        assert {j["session_id"] for j in joined} == {g1["session_id"]}
        assert {j["action"] for j in joined} == {"queued"}
        sk1 = keys.session("default", g1["session_id"])
        assert len(await streams.read_inbox(sk1, count=100)) == 21  # nothing lost
        await drain(redis_client, g1["session_id"])
        # quiet now: a burst at once opens exactly one new generation and all of it lands there
        after = await asyncio.gather(
            *[post_event(late, comment(1, f"@openhands b{i}")) for i in range(20)]
        )
        assert [a["action"] for a in after].count("started") == 1
        [sid2] = {a["session_id"] for a in after}
        assert sid2 != g1["session_id"]
        inbox2 = await streams.read_inbox(keys.session("default", sid2), count=100)
        assert sorted(i.input["payload"]["comment"]["body"] for i in inbox2) == sorted(
            f"@openhands b{i}" for i in range(20)
        )
        async with asgi_client(now) as c:
            got = (await c.get(f"/v1/sessions/{sid2}")).json()
        assert (got["reset_reason"], got["previous_session_id"]) == ("timeout", g1["session_id"])


async def test_session_reset_endpoint_routed_and_not(
    client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    await add_route(client, {**SEED_ROUTE, "route_id": "oh"})
    g1 = (await client.post("/v1/events/github", json=comment(5))).json()["sessions"][0]
    r = await client.post(f"/v1/sessions/{g1['session_id']}/reset")
    assert r.status_code == 202 and r.json()["status"] == "reset_pending"
    # busy: the event joins, the reset stays pending
    busy = (await client.post("/v1/events/github", json=comment(5))).json()["sessions"][0]
    assert busy["session_id"] == g1["session_id"]
    await drain(redis_client, g1["session_id"])
    g2 = (await client.post("/v1/events/github", json=comment(5))).json()["sessions"][0]
    assert g2["action"] == "started"
    got = (await client.get(f"/v1/sessions/{g2['session_id']}")).json()
    assert (got["reset_reason"], got["previous_session_id"]) == ("manual", g1["session_id"])
    stale = await client.post(f"/v1/sessions/{g1['session_id']}/reset")
    assert_problem(stale, 409, "session_retired")

    # not routed: a fixed id keeps its id and gets a new generation, never while busy
    inv = await client.post("/v1/sessions/fixed/invoke", json={"input": "x", "mode": "detached"})
    assert inv.status_code == 202, inv.text
    assert_problem(await client.post("/v1/sessions/fixed/reset"), 409, "session_busy")
    await drain(redis_client, "fixed")
    state_key = Keys().session("default", "fixed").state
    await redis_client.hset(state_key, "data", "{}")  # a host's snapshot (saveState-3)
    r = await client.post("/v1/sessions/fixed/reset")
    assert r.status_code == 202 and r.json() == {
        "session_id": "fixed",
        "status": "reset",
        "reason": "manual",
        "generation": 2,
    }
    got = (await client.get("/v1/sessions/fixed")).json()
    assert (got["generation"], got["reset_reason"], got["reset_after_seq"]) == (2, "manual", 0)
    assert not await redis_client.exists(state_key)  # the next activation starts fresh
    assert_problem(await client.post("/v1/sessions/nobody/reset"), 404, "session_not_found")


async def test_hermes_keys_through_the_api(client: httpx.AsyncClient) -> None:
    combos = sorted({(c[5], c[6]) for c in HERMES_CASES})
    for per_group, per_thread in combos:
        session = {
            "key_template": "chat",
            "group_sessions_per_user": per_group,
            "thread_sessions_per_user": per_thread,
        }
        rid = f"chat-{int(per_group)}{int(per_thread)}"
        await add_route(
            client, {"route_id": rid, "source": "slack", "on": ["*"], "session": session}
        )
    for kind, chat, thread, user, alt, per_group, per_thread, want in HERMES_CASES:
        event = {"type": "message", "payload": chat_payload(kind, chat, thread, user, alt)}
        r = (await client.post("/v1/events/slack", json=event)).json()
        keys = {s["route_id"]: s["session_key"] for s in r["sessions"]}
        assert keys[f"chat-{int(per_group)}{int(per_thread)}"] == want, (kind, chat, thread)
