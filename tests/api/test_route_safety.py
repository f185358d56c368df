"""Route safety on the real app and Redis: hostile expressions at save, per-route outcomes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError

from streamward.lua.keys import Keys
from streamward.lua.routes import RouteStore
from tests.api.conftest import SettingsFactory, live_server
from tests.api.helpers import ADMIN, assert_problem
from tests.api.test_routing_events import PR_ROUTE, add_route, pr_comment

PIPES_666 = "|".join(["a"] * 667)  # 666 pipes, as in the issue
NESTED = "(" * 600 + "payload" + ")" * 600
DOUBLING = "[@,@]|" * 30 + "@"  # 2^30 copies of the event if it ever ran


def by_route(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["route_id"]: s for s in body["sessions"]}


@pytest.mark.parametrize("expr", [PIPES_666, NESTED, "!" * 1500 + "a", DOUBLING])
@pytest.mark.parametrize("field", ["filter", "session.key_expr", "input_expr"])
async def test_pathological_expressions_are_refused_at_save(
    client: httpx.AsyncClient, field: str, expr: str
) -> None:
    if field == "session.key_expr":
        route = {**PR_ROUTE, "session": {"key_expr": expr}}
    else:
        route = {**PR_ROUTE, field: expr}
    body = assert_problem(
        await client.post("/admin/routes", json=route, headers=ADMIN), 422, "invalid_expression"
    )
    assert body["field"] == field and body["detail"].startswith(f"{field}: ")
    assert (await client.get("/admin/routes", headers=ADMIN)).json()["items"] == []


async def store_unchecked(redis_client: aioredis.Redis, keys: Keys, route: dict[str, Any]) -> None:
    """Write a route straight to Redis, past the API's checks (an old or hand-made route)."""
    await RouteStore(redis_client, keys).save(
        "default", route["route_id"], orjson.dumps({"expr_root": "payload", **route}).decode()
    )


async def test_unchecked_pathological_routes_fail_alone(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, keys: Keys
) -> None:
    await add_route(client, PR_ROUTE)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("bad-filter", {"filter": PIPES_666}),
        ("bad-key", {"session": {"key_expr": NESTED}}),
        ("bad-input", {"input_expr": DOUBLING}),
        ("bad-type", {"filter": "abs(payload)"}),  # a function given the wrong type
    ]
    for route_id, patch in bad:
        await store_unchecked(redis_client, keys, {**PR_ROUTE, "route_id": route_id, **patch})
    # longer than the model allows: not even a Route (it used to fail every event with 500)
    too_long = {**PR_ROUTE, "route_id": "bad-doc", "filter": "|".join(["a"] * 1500)}
    await store_unchecked(redis_client, keys, too_long)
    r = await client.post("/v1/events/github", json=pr_comment(1))
    assert r.status_code == 202, r.text
    body = r.json()
    out = by_route(body)
    assert (body["matched"], body["runs_started"], body["routes_failed"]) == (6, 1, 2)
    assert out["bad-doc"]["action"] == "failed"
    assert out["bad-doc"]["error"]["code"] == "invalid_route"
    listed = (await client.get("/admin/routes", headers=ADMIN)).json()["items"]
    assert "bad-doc" not in [x["route_id"] for x in listed]
    assert out["gh-pr"]["action"] == "started" and out["gh-pr"]["run_id"]
    assert out["bad-filter"]["action"] == "filtered"
    assert out["bad-filter"]["error"]["code"] == "expression_error"
    assert out["bad-filter"]["error"]["field"] == "filter"
    assert out["bad-key"]["action"] == "no_key"
    assert out["bad-key"]["error"]["field"] == "session.key_expr"
    assert out["bad-input"]["action"] == "failed"
    assert out["bad-input"]["error"] == {
        "code": "expression_error",
        "field": "input_expr",
        "detail": out["bad-input"]["error"]["detail"],
    }
    assert "multiply" in out["bad-input"]["error"]["detail"]
    assert out["bad-type"]["action"] == "filtered"
    assert out["bad-type"]["error"]["code"] == "expression_error"
    # nothing was bound for the failing routes
    routes = RouteStore(redis_client, keys)
    key = "https://github.com/o/r/pull/1"
    for route_id in ("bad-filter", "bad-key", "bad-input"):
        assert await routes.binding("default", route_id, key) == {}
    # and the same event again still answers (the poison is not a one-off)
    again = await client.post("/v1/events/github", json=pr_comment(1))
    assert again.status_code == 202 and by_route(again.json())["gh-pr"]["action"] == "queued"


async def test_a_failing_enqueue_fails_its_route_only(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_route(client, PR_ROUTE)
    await add_route(client, {**PR_ROUTE, "route_id": "gh-copy"})
    store = app.state.sw.store
    real_enqueue = store.enqueue

    async def enqueue(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("source") == "event:gh-copy":
            raise RuntimeError("injected")
        return await real_enqueue(*args, **kwargs)

    monkeypatch.setattr(store, "enqueue", enqueue)
    r = await client.post("/v1/events/github", json=pr_comment(1))
    assert r.status_code == 202, r.text
    out = by_route(r.json())
    assert out["gh-pr"]["action"] == "started"
    assert out["gh-copy"]["action"] == "failed"
    assert out["gh-copy"]["error"]["code"] == "delivery_error"
    assert "injected" in out["gh-copy"]["error"]["detail"]
    assert r.json()["routes_failed"] == 1


async def test_redis_failing_every_route_is_503_so_a_retry_is_safe(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_route(client, PR_ROUTE)

    async def enqueue(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("injected")

    monkeypatch.setattr(app.state.sw.store, "enqueue", enqueue)
    r = await client.post("/v1/events/github", json=pr_comment(1))
    assert_problem(r, 503, "redis_unavailable")


def big_event(items: int) -> dict[str, Any]:
    event = pr_comment(1)
    event["payload"]["items"] = [{"n": i, "s": "x" * 8} for i in range(items)]
    return event


async def test_huge_input_expr_is_input_too_large_and_the_api_stays_live(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, keys: Keys
) -> None:
    small = {**PR_ROUTE, "route_id": "small"}
    # 8 copies of a ~300 KB event: over the cap by size, bounded by the estimate
    copies = {**PR_ROUTE, "route_id": "copies", "input_expr": "[@,@,@,@,@,@,@,@]"}
    # a projection multiplying every item: stopped by the step budget
    projected = {
        **PR_ROUTE,
        "route_id": "projected",
        "input_expr": "items[*].[@,@,@,@,@,@,@,@]",
    }
    event = big_event(12_000)
    async with (
        live_server(make_settings(start_timeout_s=0)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        for route in (small, copies, projected):
            await add_route(client, route)

        async def livez_probe() -> list[int]:
            codes = []
            async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
                for _ in range(20):
                    codes.append((await probe.get("/livez")).status_code)
                    await asyncio.sleep(0.02)
            return codes

        events = asyncio.gather(*[client.post("/v1/events/github", json=event) for _ in range(6)])
        answers, codes = await asyncio.gather(events, livez_probe())
        assert codes == [200] * 20
        for r in answers:
            assert r.status_code == 202, r.text
            out = by_route(r.json())
            assert out["small"]["action"] in ("started", "queued")
            for route_id in ("copies", "projected"):
                assert out[route_id]["action"] == "input_too_large"
                assert out[route_id]["error"]["code"] == "input_too_large"
                assert out[route_id]["error"]["field"] == "input_expr"
                assert out[route_id]["session_id"] is None and out[route_id]["run_id"] is None
            assert r.json()["routes_failed"] == 2
    routes = RouteStore(redis_client, keys)
    key = "https://github.com/o/r/pull/1"
    assert await routes.binding("default", "copies", key) == {}
    assert await routes.binding("default", "projected", key) == {}


async def test_input_cap_is_a_setting(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    from tests.api.conftest import asgi_client, running_app

    async with (
        running_app(make_settings(route_input_max_bytes=50)) as app,
        asgi_client(app) as client,
    ):
        await add_route(client, PR_ROUTE)
        short = (await client.post("/v1/events/github", json=pr_comment(1, "hi"))).json()
        assert short["sessions"][0]["action"] == "started"
        long = (await client.post("/v1/events/github", json=pr_comment(2, "y" * 60))).json()
        assert long["sessions"][0]["action"] == "input_too_large"
        assert "50 bytes" in long["sessions"][0]["error"]["detail"]
