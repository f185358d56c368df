"""GET /v1/sessions from the Redis indexes: exact pages, every order, filters, cursors, and
paging under concurrent churn (a property test)."""

from __future__ import annotations

import asyncio
import base64
import random
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamward.api.config import Settings
from streamward.lua.keys import SessionKeys
from streamward.lua.streams import Streams
from streamward.tools.server import RedisServer
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import assert_problem

pytestmark = pytest.mark.usefixtures("no_start_wait")
T0 = 1_700_000_000_000  # ms; scores are set explicitly so every order is known


async def make(
    streams: Streams,
    sid: str,
    created: int,
    updated: int,
    project: str = "default",
    **meta: Any,
) -> SessionKeys:
    """A session as the writers leave it: meta, and the indexes through the facade."""
    sk = streams.keys.session(project, sid)
    fields: dict[str, Any] = {"created_ms": created, "updated_ms": updated, "status": "active"}
    await streams.set_meta(sk, **(fields | meta))
    await streams.touch_session(sk, updated, created_ms=created)
    return sk


async def page_all(
    client: httpx.AsyncClient, limit: int, **params: Any
) -> tuple[list[str], list[int]]:
    """Every page of a listing: the ids in order and each page's size."""
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        q = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/sessions", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [s["session_id"] for s in body["items"]]
        sizes.append(len(body["items"]))
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, sizes
    raise AssertionError("the listing never ended")


def _pages(n: int, limit: int) -> list[int]:
    full, rest = divmod(n, limit)
    return [limit] * full + ([rest] if rest else []) or [0]


@pytest.mark.parametrize("limit", [1, 4, 23, 1000])
async def test_every_order_pages_exactly(
    client: httpx.AsyncClient, streams: Streams, limit: int
) -> None:
    rng = random.Random(7)
    ids = [f"s{i:02d}" for i in range(23)]
    act = list(range(23))
    rng.shuffle(act)
    for i, sid in enumerate(ids):
        # created: i (with a run of equal scores: ties order by id); activity: shuffled
        await make(streams, sid, T0 + min(i, 10) * 1000, T0 + 100_000 + act[i] * 1000)
    by_created = sorted(ids, key=lambda s: (T0 + min(int(s[1:]), 10) * 1000, s))
    by_activity = sorted(ids, key=lambda s: act[int(s[1:])])
    expected = {
        ("created", "asc"): by_created,
        ("created", "desc"): by_created[::-1],
        ("updated", "asc"): by_activity,
        ("updated", "desc"): by_activity[::-1],
    }
    for (sort, order), want in expected.items():
        seen, sizes = await page_all(client, limit, sort=sort, order=order)
        assert seen == want, (sort, order)
        assert sizes == _pages(23, limit), (sort, order)
    default, _ = await page_all(client, limit)
    assert default == by_activity[::-1]  # newest activity first


async def test_limit_bounds_and_bad_parameters(client: httpx.AsyncClient) -> None:
    for bad in ({"limit": 0}, {"limit": 1001}, {"sort": "name"}, {"order": "up"}):
        r = await client.get("/v1/sessions", params=bad)
        assert r.status_code == 422 and r.json()["code"] != "internal_error", r.text
    assert_problem(
        await client.get("/v1/sessions", params={"created_after": "yesterday"}),
        422,
        "invalid_timestamp",
    )
    dup = await client.get("/v1/sessions?metadata.a=1&metadata.a=2")
    assert_problem(dup, 422, "invalid_filter")
    clash = await client.get("/v1/sessions", params={"route": "a", "route_id": "b"})
    assert_problem(clash, 422, "invalid_filter")


async def test_filters(client: httpx.AsyncClient, streams: Streams) -> None:
    now = await streams.now_ms()
    md = orjson.dumps
    await make(streams, "a", T0, now - 1000, type="chat", route_id="r1",
               metadata=md({"team": "x", "n": 1, "ok": True}))  # fmt: skip
    await make(streams, "b", T0 + 1, now - 10 * 60_000, route_id="r2",
               metadata=md({"team": "y", "n": 1.5}))  # fmt: skip
    await make(streams, "c", T0 + 2, T0 + 5, status="idle", metadata="[1, 2]")
    await make(streams, "d", T0 + 3, T0 + 6, metadata=md({"team": None, "deep": {"a": 1}}))
    other = await make(streams, "e", T0 + 4, now, project="other")

    async def ids(**params: Any) -> list[str]:
        seen, _ = await page_all(client, 2, sort="created", order="asc", **params)
        return seen

    assert await ids() == ["a", "b", "c", "d"]  # never another project's
    assert await ids(status="idle") == ["c"]
    assert await ids(route="r1") == ["a"] and await ids(route_id="r2") == ["b"]
    assert await ids(type="chat") == ["a"]
    assert await ids(type="default") == ["b", "c", "d"]  # no type: the default type
    assert await ids(created_after="2023-11-14T22:13:20.001Z") == ["c", "d"]  # T0 + 1
    assert await ids(updated_after="2023-11-14T22:13:20.005Z") == ["a", "b", "d"]
    assert await ids(active_minutes=5) == ["a"]
    assert await ids(**{"metadata.team": "x"}) == ["a"]
    assert await ids(**{"metadata.n": "1"}) == ["a"]  # numbers: their JSON text
    assert await ids(**{"metadata.n": "1.5"}) == ["b"]
    assert await ids(**{"metadata.ok": "true"}) == ["a"]
    assert await ids(**{"metadata.team": "null"}) == []  # null, objects: no match
    assert await ids(**{"metadata.deep": '{"a": 1}'}) == []
    assert await ids(**{"metadata.team": "x", "metadata.n": "2"}) == []
    assert await ids(route="r1", active_minutes=5, **{"metadata.team": "x"}) == ["a"]
    # the same filters in activity order
    seen, _ = await page_all(client, 1, active_minutes=15)
    assert seen == ["a", "b"]
    seen, _ = await page_all(client, 1, created_after="2023-11-14T22:13:20.001Z")
    assert seen == ["d", "c"]
    assert (await client.get("/v1/sessions/e")).status_code == 404  # project default
    assert other.project == "other"


async def test_title_and_metadata_are_shown(client: httpx.AsyncClient, streams: Streams) -> None:
    await make(streams, "a", T0, T0, title="Support", metadata='{"team": "x"}')
    item = (await client.get("/v1/sessions")).json()["items"][0]
    assert item["title"] == "Support" and item["metadata"] == {"team": "x"}


async def test_bad_tampered_foreign_and_expired_cursors(
    client: httpx.AsyncClient, streams: Streams
) -> None:
    for i in range(5):
        await make(streams, f"s{i}", T0 + i, T0 + i)
    first = (await client.get("/v1/sessions", params={"limit": 2})).json()
    cursor = first["next_cursor"]
    assert cursor is not None
    payload, _, check = cursor.partition(".")
    body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["i"] = 0  # start over: a forged position
    forged = base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode() + "." + check
    flipped = ("A" if cursor[5] != "A" else "B").join((cursor[:5], cursor[6:]))
    for bad in ("garbage", "x.y", forged, flipped, cursor[:-2], "r.1.x", "a" * 2000):
        r = await client.get("/v1/sessions", params={"cursor": bad})
        assert_problem(r, 422, "invalid_cursor")
    # a cursor belongs to its query: another sort or filter is refused
    r = await client.get("/v1/sessions", params={"cursor": cursor, "sort": "created"})
    assert_problem(r, 422, "invalid_cursor")
    r = await client.get("/v1/sessions", params={"cursor": cursor, "status": "active"})
    assert_problem(r, 422, "invalid_cursor")
    # the limit may change between pages
    rest = (await client.get("/v1/sessions", params={"cursor": cursor, "limit": 3})).json()
    assert [s["session_id"] for s in rest["items"]] == ["s2", "s1", "s0"]
    # the activity order's snapshot expired: 410, start again
    for key in await streams.client.keys("sw:project:{default}:list:*"):
        await streams.client.delete(key)
    assert_problem(
        await client.get("/v1/sessions", params={"cursor": cursor}), 410, "cursor_expired"
    )


async def test_activity_order_is_frozen_by_the_first_page(
    client: httpx.AsyncClient, streams: Streams
) -> None:
    for i in range(6):
        await make(streams, f"s{i}", T0 + i, T0 + i)
    page = (await client.get("/v1/sessions", params={"limit": 2})).json()
    assert [s["session_id"] for s in page["items"]] == ["s5", "s4"]
    # meanwhile: an unseen session jumps to the top, a seen one too, one is new
    await streams.touch_session(streams.keys.session("default", "s1"), T0 + 100)
    await streams.touch_session(streams.keys.session("default", "s5"), T0 + 101)
    await make(streams, "new", T0 + 102, T0 + 102)
    await client.delete("/v1/sessions/s2")  # deleted meanwhile: left out
    seen = [s["session_id"] for s in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        page = (await client.get("/v1/sessions", params={"limit": 2, "cursor": cursor})).json()
        seen += [s["session_id"] for s in page["items"]]
        cursor = page["next_cursor"]
    assert seen == ["s5", "s4", "s3", "s1", "s0"]  # as of the first page
    # a one-page listing leaves no snapshot behind; a longer one's expires
    snapshots = await streams.client.keys("sw:project:{default}:list:*")
    assert len(snapshots) == 1  # read by a second page: kept for the full TTL
    assert 60_000 < await streams.client.pttl(snapshots[0]) <= 600_000
    await streams.client.delete(*snapshots)
    await client.get("/v1/sessions", params={"limit": 2})  # a first page read alone
    (first,) = await streams.client.keys("sw:project:{default}:list:*")
    assert 0 < await streams.client.pttl(first) <= 60_000
    await streams.client.delete(first)
    await client.get("/v1/sessions", params={"limit": 100})
    assert await streams.client.keys("sw:project:{default}:list:*") == []


async def test_invoke_delete_and_revive_keep_the_indexes(
    client: httpx.AsyncClient, streams: Streams
) -> None:
    for sid in ("a", "b"):
        r = await client.post(f"/v1/sessions/{sid}/invoke", json={"mode": "detached", "input": 1})
        assert r.status_code == 202, r.text
    seen, _ = await page_all(client, 10, sort="created", order="asc")
    assert seen == ["a", "b"]
    assert await streams.count_sessions("default") == 2
    assert (await client.delete("/v1/sessions/a")).status_code == 200
    assert (await page_all(client, 10))[0] == ["b"] and await streams.count_sessions("default") == 1
    created = (await client.get("/v1/sessions/a")).json()["created_at"]
    await asyncio.sleep(0.005)  # a later ms than b's activity
    r = await client.post("/v1/sessions/a/invoke", json={"mode": "detached", "input": 2})
    assert r.status_code == 202, r.text
    # listed again, newest activity first, under its first creation time
    assert (await page_all(client, 10))[0] == ["a", "b"]
    assert (await page_all(client, 10, sort="created", order="asc"))[0] == ["a", "b"]
    items = (await client.get("/v1/sessions", params={"sort": "created"})).json()["items"]
    assert items[1]["created_at"] == created


async def test_gone_sessions_are_pruned_and_old_ones_backfilled(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, streams: Streams
) -> None:
    keys = streams.keys
    # written before the project indexes existed: only sw:sessions and meta
    for i in range(3):
        sk = keys.session("default", f"old{i}")
        await streams.set_meta(sk, created_ms=T0 + i, status="active")
        await redis_client.zadd(keys.sessions, {sk.ref: T0 + 10 + i})
    await redis_client.zadd(keys.sessions, {"default/expired": T0})  # keys gone: not listed
    await redis_client.delete(keys.project_indexes_backfilled)  # the `app` fixture's run
    async with running_app(make_settings()) as app, asgi_client(app) as c:
        for _ in range(200):
            if await redis_client.exists(keys.project_indexes_backfilled):
                break
            await asyncio.sleep(0.01)
        assert (await page_all(c, 2))[0] == ["old2", "old1", "old0"]
        # a session whose keys expired after retention leaves the indexes when met
        await redis_client.delete(keys.session("default", "old1").meta)
        assert (await page_all(c, 1))[0] == ["old2", "old0"]
        pk = keys.project_index("default")
        assert await redis_client.zscore(pk.updated, "old1") is None
        assert await redis_client.zscore(pk.created, "old1") is None
        assert await streams.backfill_project_indexes() == 0  # done once


async def test_selective_filter_bounds_the_scan(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, streams: Streams
) -> None:
    for i in range(250):
        await make(streams, f"s{i:03d}", T0 + i, T0 + i, status="idle" if i == 0 else "active")
    async with running_app(make_settings(list_scan_max=100)) as app, asgi_client(app) as c:
        seen, sizes = await page_all(c, 5, status="idle")
        # 250 candidates, 100 a request: short pages with cursors, then the one match
        assert seen == ["s000"] and sizes == [0, 0, 1]


# -- the property: paging under concurrent churn ---------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["create", "update", "delete"]), st.integers(0, 39)), max_size=8
)


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.integers(0, 30),
    limit=st.integers(1, 7),
    sort=st.sampled_from(["created", "updated"]),
    order=st.sampled_from(["asc", "desc"]),
    status=st.sampled_from([None, "active"]),
    churn=st.lists(OPS, min_size=1, max_size=12),
)
async def test_paging_under_churn_skips_and_repeats_nothing(
    client: httpx.AsyncClient,
    streams: Streams,
    redis_server: RedisServer,
    n: int,
    limit: int,
    sort: str,
    order: str,
    status: str | None,
    churn: list[list[tuple[str, int]]],
) -> None:
    await streams.client.flushdb()
    live: set[str] = set()
    for i in range(n):
        sid = f"s{i:02d}"
        r = await client.post(f"/v1/sessions/{sid}/invoke", json={"mode": "detached"})
        assert r.status_code == 202, r.text
        live.add(sid)
    start = set(live)
    touched_out: set[str] = set()  # deleted at some point: not present throughout

    async def apply(ops: list[tuple[str, int]]) -> None:
        for op, i in ops:
            sid = f"s{i:02d}"
            if op == "delete":
                if (await client.delete(f"/v1/sessions/{sid}")).status_code == 200:
                    touched_out.add(sid)
                    live.discard(sid)
            else:  # create or update: an input is both, through the real invoke path
                r = await client.post(f"/v1/sessions/{sid}/invoke", json={"mode": "detached"})
                assert r.status_code == 202, r.text
                live.add(sid)
            await asyncio.sleep(0)

    params: dict[str, Any] = {"limit": limit, "sort": sort, "order": order}
    if status:
        params["status"] = status
    seen: list[str] = []
    cursor: str | None = None
    step = 0
    while True:
        q = params | ({"cursor": cursor} if cursor else {})
        ops = churn[step % len(churn)]
        r, _ = await asyncio.gather(client.get("/v1/sessions", params=q), apply(ops))
        step += 1
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        if body["next_cursor"] is not None:
            assert len(body["items"]) == limit  # only the last page is short
        seen += [s["session_id"] for s in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), seen  # nothing repeated
    throughout = start - touched_out
    assert throughout <= set(seen), sorted(throughout - set(seen))  # nothing skipped


def test_settings_default_bounds() -> None:
    s = Settings()
    assert s.list_scan_max >= 1000 and s.list_snapshot_ttl_s > 0


def test_client_sends_the_listing_parameters() -> None:
    from streamward.client import _sessions_req

    req = _sessions_req(
        "idle", "c1", 10, {"sort": "created", "order": "asc", "metadata": {"team": "x"},
                           "active_minutes": 5, "type": None},
    )  # fmt: skip
    assert req.params == {
        "limit": "10", "status": "idle", "cursor": "c1", "sort": "created", "order": "asc",
        "metadata.team": "x", "active_minutes": "5",
    }  # fmt: skip
