"""Webhook sources through the real app on a real Redis: raw GitHub/Slack bodies, signatures
(github, slack, hmac), delivery dedupe, and routes without a session."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.sources import SourceStore
from streamward.lua.streams import Streams
from tests.api.helpers import ADMIN, assert_problem

SECRET = "It's a Secret to Everybody"
# Expressions read `payload.x || x`: they hold whether the expression root is the envelope
# {type, payload} (today) or the payload itself (issue 15's payload-rooted routes).
GH_ROUTE: dict[str, Any] = {
    "route_id": "gh",
    "source": "gh",
    "on": ["issue_comment.created", "push"],
    "session": {"key_expr": "payload.issue.number || payload.ref || issue.number || ref"},
    "input_expr": "{text: payload.comment.body || comment.body}",
}


def gh_payload(number: int = 7, body: str = "@bot please") -> bytes:
    # shaped like GitHub's issue_comment delivery (the fields routes read)
    return orjson.dumps(
        {
            "action": "created",
            "issue": {"number": number, "title": "t", "user": {"login": "ada"}},
            "comment": {"id": 1, "body": body, "user": {"login": "ada"}},
            "repository": {"full_name": "o/r"},
            "sender": {"login": "ada"},
        }
    )


def gh_headers(body: bytes, delivery: str, event: str = "issue_comment") -> dict[str, str]:
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={sig}",
        "Content-Type": "application/json",
    }


def slack_headers(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    base = b"v0:" + stamp.encode() + b":" + body
    sig = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": f"v0={sig}", "X-Slack-Request-Timestamp": stamp}


async def put_source(client: httpx.AsyncClient, name: str, **cfg: Any) -> dict[str, Any]:
    r = await client.put(f"/admin/sources/{name}", json=cfg, headers=ADMIN)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def add_route(client: httpx.AsyncClient, route: dict[str, Any]) -> None:
    r = await client.post("/admin/routes", json=route, headers=ADMIN)
    assert r.status_code in (200, 201), r.text


async def bindings(redis_client: aioredis.Redis) -> list[str]:
    return sorted([k async for k in redis_client.scan_iter("sw:*:binding")])


async def test_source_crud_never_returns_the_secret(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/admin/sources/gh",
        json={"kind": "github", "verification": "github", "secret": SECRET},
        headers=ADMIN,
    )
    assert r.status_code == 201
    assert r.json() == {
        "source": "gh",
        "project": "default",
        "kind": "github",
        "verification": "github",
        "signature_header": "X-Signature-256",
        "has_secret": True,
    }
    assert SECRET not in (await client.get("/admin/sources/gh", headers=ADMIN)).text
    assert SECRET not in (await client.get("/admin/sources", headers=ADMIN)).text
    # applied again as read back (no secret): the stored secret stays
    again = await client.put(
        "/admin/sources/gh", json={"kind": "github", "verification": "github"}, headers=ADMIN
    )
    assert again.status_code == 200 and again.json()["has_secret"] is True
    body = assert_problem(
        await client.put("/admin/sources/sl", json={"verification": "slack"}, headers=ADMIN),
        422,
        "invalid_source",
    )
    assert body["field"] == "secret"
    assert_problem(
        await client.put("/admin/sources/x", json={"kind": "gitlab"}, headers=ADMIN),
        422,
        "validation_error",
    )
    assert_problem(await client.put("/admin/sources/gh", json={}), 401, "missing_token")
    assert (await client.delete("/admin/sources/gh", headers=ADMIN)).status_code == 200
    assert_problem(await client.get("/admin/sources/gh", headers=ADMIN), 404, "source_not_found")


async def test_github_signed_payload_is_accepted_and_one_changed_byte_is_401(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, streams: Streams, keys: Keys
) -> None:
    await put_source(client, "gh", kind="github", verification="github", secret=SECRET)
    await add_route(client, GH_ROUTE)
    body = gh_payload(7)
    r = await client.post("/v1/events/gh", content=body, headers=gh_headers(body, "d-1"))
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["duplicate"] is False and first["runs_started"] == 1
    session = first["sessions"][0]
    assert session["session_key"] == "7" and session["action"] == "started"
    inbox = await streams.read_inbox(keys.session("default", session["session_id"]))
    assert [i.input for i in inbox] == [{"text": "@bot please"}]

    before = await bindings(redis_client)
    tampered_body = gh_payload(8)
    for tampered, headers in [
        (tampered_body, gh_headers(gh_payload(8, "@bot pleasE"), "d-2")),  # one byte changed
        (tampered_body, {**gh_headers(tampered_body, "d-2"), "X-Hub-Signature-256": ""}),
        (tampered_body, gh_headers(tampered_body, "d-2") | {"X-Hub-Signature-256": "sha256=00"}),
    ]:
        refused = await client.post("/v1/events/gh", content=tampered, headers=headers)
        problem = assert_problem(refused, 401, "invalid_signature")
        assert problem["detail"]
    assert await bindings(redis_client) == before  # nothing bound, nothing enqueued
    # the refused delivery id was not claimed: the genuine delivery still goes through
    ok = await client.post(
        "/v1/events/gh", content=tampered_body, headers=gh_headers(tampered_body, "d-2")
    )
    assert ok.status_code == 202 and ok.json()["duplicate"] is False


async def test_github_type_is_event_dot_action_and_bodies_are_raw(
    client: httpx.AsyncClient,
) -> None:
    await put_source(client, "gh", kind="github")  # no verification
    await add_route(client, GH_ROUTE)
    push = orjson.dumps({"ref": "refs/heads/main", "commits": []})
    r = await client.post(
        "/v1/events/gh", content=push, headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "p"}
    )
    assert r.status_code == 202 and r.json()["sessions"][0]["session_key"] == "refs/heads/main"
    other = await client.post(
        "/v1/events/gh",
        content=orjson.dumps({"action": "deleted", "issue": {"number": 1}}),
        headers={"X-GitHub-Event": "issue_comment"},
    )
    assert other.status_code == 202 and other.json()["matched"] == 0  # issue_comment.deleted
    # `on` may name the event alone: every action of it matches
    await add_route(client, {**GH_ROUTE, "route_id": "any", "on": ["issue_comment"]})
    deleted = await client.post(
        "/v1/events/gh",
        content=orjson.dumps({"action": "deleted", "issue": {"number": 1}}),
        headers={"X-GitHub-Event": "issue_comment"},
    )
    assert [s["route_id"] for s in deleted.json()["sessions"]] == ["any"]
    assert_problem(await client.post("/v1/events/gh", content=push), 422, "missing_event_type")
    assert_problem(
        await client.post("/v1/events/gh", content=b"{", headers={"X-GitHub-Event": "push"}),
        422,
        "malformed_json",
    )


async def test_redelivered_github_delivery_starts_nothing_and_replays_the_first_answer(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    await put_source(client, "gh", kind="github", verification="github", secret=SECRET)
    await add_route(client, GH_ROUTE)
    body = gh_payload(9)
    first = await client.post("/v1/events/gh", content=body, headers=gh_headers(body, "same"))
    again = await client.post("/v1/events/gh", content=body, headers=gh_headers(body, "same"))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    sid = first.json()["sessions"][0]["session_id"]
    assert len(await streams.read_inbox(keys.session("default", sid))) == 1
    # a redelivery is still verified first: a forged copy of a known id is refused
    forged = gh_headers(body, "same") | {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert_problem(
        await client.post("/v1/events/gh", content=body, headers=forged), 401, "invalid_signature"
    )


async def test_concurrent_duplicates_deliver_once(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    await put_source(client, "gh", kind="github", verification="github", secret=SECRET)
    await add_route(client, GH_ROUTE)
    body = gh_payload(11)
    answers = await asyncio.gather(
        *[
            client.post("/v1/events/gh", content=body, headers=gh_headers(body, "burst"))
            for _ in range(8)
        ]
    )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 1 and set(codes) <= {200, 202, 409}, codes
    for a in answers:
        if a.status_code == 409:
            assert a.json()["code"] == "delivery_in_progress"
            assert a.headers["Retry-After"] == "1"
        elif a.status_code == 200:
            assert a.json()["duplicate"] is True
    sid = next(a for a in answers if a.status_code == 202).json()["sessions"][0]["session_id"]
    assert len(await streams.read_inbox(keys.session("default", sid))) == 1


async def test_a_delivery_in_flight_answers_409_and_a_failed_one_can_be_retried(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, keys: Keys
) -> None:
    await add_route(client, {**GH_ROUTE, "source": "gen", "on": ["issue_comment.created"]})
    sources = SourceStore(redis_client, keys)
    assert await sources.claim("default", "gen", "k-1") is None  # another request holds it
    event = {"type": "issue_comment.created", "payload": {"issue": {"number": 1}}}
    busy = await client.post("/v1/events/gen", json=event, headers={"Idempotency-Key": "k-1"})
    assert_problem(busy, 409, "delivery_in_progress")
    assert busy.headers["Retry-After"] == "1"
    await sources.release("default", "gen", "k-1")  # the first request failed
    retried = await client.post("/v1/events/gen", json=event, headers={"Idempotency-Key": "k-1"})
    assert retried.status_code == 202 and retried.json()["runs_started"] == 1
    dup = await client.post("/v1/events/gen", json=event, headers={"Idempotency-Key": "k-1"})
    assert dup.status_code == 200 and dup.json()["duplicate"] is True
    assert dup.json()["sessions"] == retried.json()["sessions"]
    # no Idempotency-Key: no dedupe, as before
    plain = await client.post("/v1/events/gen", json=event)
    assert plain.status_code == 202 and plain.json()["events_queued"] == 1


async def test_slack_signature_timestamp_and_url_verification(
    client: httpx.AsyncClient, streams: Streams, keys: Keys
) -> None:
    await put_source(client, "sl", kind="slack", verification="slack", secret=SECRET)
    await add_route(
        client,
        {
            "route_id": "sl",
            "source": "sl",
            "on": ["message"],
            "session": {"key_expr": "payload.event.channel || event.channel"},
            "input_expr": "payload.event.text || event.text",
        },
    )
    challenge = orjson.dumps({"type": "url_verification", "challenge": "c-123", "token": "t"})
    r = await client.post("/v1/events/sl", content=challenge, headers=slack_headers(challenge))
    assert r.status_code == 200 and r.json() == {"challenge": "c-123"}
    assert_problem(await client.post("/v1/events/sl", content=challenge), 401, "invalid_signature")

    envelope = orjson.dumps(
        {
            "type": "event_callback",
            "event_id": "Ev1",
            "team_id": "T1",
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": "hi"},
        }
    )
    ok = await client.post("/v1/events/sl", content=envelope, headers=slack_headers(envelope))
    assert ok.status_code == 202, ok.text
    sid = ok.json()["sessions"][0]["session_id"]
    assert [i.input for i in await streams.read_inbox(keys.session("default", sid))] == ["hi"]
    within = slack_headers(envelope, int(time.time()) - 240)
    dup = await client.post("/v1/events/sl", content=envelope, headers=within)
    assert dup.status_code == 200 and dup.json()["duplicate"] is True  # event_id Ev1 again
    for headers in [
        slack_headers(envelope, int(time.time()) - 301),  # replayed too late
        slack_headers(envelope, int(time.time()) + 301),
        slack_headers(envelope, secret="wrong"),
        {**slack_headers(envelope), "X-Slack-Request-Timestamp": "soon"},
    ]:
        assert_problem(
            await client.post("/v1/events/sl", content=envelope, headers=headers),
            401,
            "invalid_signature",
        )
    assert len(await streams.read_inbox(keys.session("default", sid))) == 1


async def test_hmac_source_with_a_named_header(client: httpx.AsyncClient) -> None:
    cfg = await put_source(
        client, "hooks", verification="hmac", secret=SECRET, signature_header="X-Hook-Sig"
    )
    assert cfg["kind"] == "generic" and cfg["signature_header"] == "X-Hook-Sig"
    await add_route(
        client,
        {
            "route_id": "h",
            "source": "hooks",
            "on": ["*"],
            "session": {"key_expr": "payload.k || k"},
        },
    )
    body = orjson.dumps({"type": "ping", "payload": {"k": "a"}})
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    for value in (sig, f"sha256={sig}"):
        r = await client.post("/v1/events/hooks", content=body, headers={"X-Hook-Sig": value})
        assert r.status_code == 202, r.text
    for headers in [{}, {"X-Hook-Sig": sig[:-1] + ("0" if sig[-1] != "0" else "1")}]:
        assert_problem(
            await client.post("/v1/events/hooks", content=body, headers=headers),
            401,
            "invalid_signature",
        )


async def test_routes_without_a_session_start_one_per_event_keyed_by_delivery(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, streams: Streams, keys: Keys
) -> None:
    await put_source(client, "gh", kind="github")
    route = {k: v for k, v in GH_ROUTE.items() if k != "session"}
    await add_route(client, route)
    got = (await client.get("/admin/routes/gh", headers=ADMIN)).json()
    assert got.get("session") is None

    async def deliver(delivery: str | None, number: int = 5) -> dict[str, Any]:
        headers = {"X-GitHub-Event": "issue_comment"}
        if delivery is not None:
            headers["X-GitHub-Delivery"] = delivery
        r = await client.post("/v1/events/gh", content=gh_payload(number), headers=headers)
        assert r.status_code == 202, r.text
        session: dict[str, Any] = r.json()["sessions"][0]
        return session

    a, b = await deliver("d-a"), await deliver("d-b")
    assert a["action"] == b["action"] == "started"
    assert a["session_id"] != b["session_id"] and a["session_id"].startswith("gh.once.")
    # past the dedupe window (its record gone), the same delivery reaches the same run once
    await redis_client.delete(*[k async for k in redis_client.scan_iter("sw:*:delivery:*")])
    again = await deliver("d-a")
    assert (again["session_id"], again["run_id"]) == (a["session_id"], a["run_id"])
    inbox = await streams.read_inbox(keys.session("default", a["session_id"]))
    assert [i.input for i in inbox] == [{"text": "@bot please"}]
    # without a delivery id: a random session per event
    x, y = await deliver(None), await deliver(None)
    assert x["session_id"] != y["session_id"]
    assert await bindings(redis_client) == []  # sessionless routes bind no key
    meta = await streams.meta(keys.session("default", x["session_id"]))
    assert meta["route_id"] == "gh"


async def test_route_dry_run_enqueues_nothing(
    client: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    mention = "contains(payload.comment.body || comment.body, '@bot')"
    await add_route(client, {**GH_ROUTE, "filter": mention})
    payload = orjson.loads(gh_payload(3))
    r = await client.post(
        "/admin/routes/gh/test",
        json={"type": "issue_comment.created", "payload": payload},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["action"] == "deliver" and out["filter_passed"] is True
    assert out["session_key"] == "3" and out["session_id"].startswith("gh.")
    assert out["input"] == {"text": "@bot please"}
    payload["comment"]["body"] = "no mention"
    filtered = await client.post(
        "/admin/routes/gh/test",
        json={"type": "issue_comment.created", "payload": payload},
        headers=ADMIN,
    )
    assert filtered.json()["action"] == "filtered" and filtered.json()["filter_passed"] is False
    off = await client.post(
        "/admin/routes/gh/test", json={"type": "star", "payload": {}}, headers=ADMIN
    )
    assert off.json()["type_matches"] is False and off.json()["action"] == "not_on"
    assert await bindings(redis_client) == []
    assert [k async for k in redis_client.scan_iter("sw:{*")] == []  # no session keys
    assert_problem(
        await client.post("/admin/routes/nope/test", json={"type": "x"}, headers=ADMIN),
        404,
        "route_not_found",
    )
