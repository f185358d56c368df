"""The API with the record configured, against a real Redis and PostgreSQL: transcript pages
and /events resumes across the hot-tail boundary, the keyset listing with filters, ownership
history from the archive, /readyz detail, and a database outage."""

from __future__ import annotations

import httpx
import orjson
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record.archiver import Archiver, ArchiveSettings
from streamward.lua.archive import ArchiveCalls
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.server import free_port
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.record.helpers import write_log

HOT = 50


async def _archive_all(client: aioredis.Redis, engine: AsyncEngine) -> None:
    keys = Keys()
    arch = Archiver(Streams(client, keys), ArchiveCalls(client, keys), engine,
                    ArchiveSettings(hot_tail_entries=HOT, batch_delay_s=0))  # fmt: skip
    for _ in range(50):
        await arch.tick()
        if await arch.calls.oldest_due_ms(await arch.calls.now_ms()) is None:
            return
    raise AssertionError("work set never drained")


async def _pages(c: httpx.AsyncClient, sid: str, limit: int) -> list[dict[str, object]]:
    got: list[dict[str, object]] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        r = await c.get(f"/v1/sessions/{sid}/transcript", params=params)
        assert r.status_code == 200, r.text
        got += r.json()["items"]
        after = r.json()["next_after"]
        if after is None:
            return got


async def test_transcript_and_resume_across_the_hot_tail_read_like_redis(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, store: LeaseStore,
    keys: Keys, engine: AsyncEngine, database_url: str,
) -> None:  # fmt: skip
    streams = Streams(redis_client, keys)
    sk = keys.session("default", "t1")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 300)
    async with running_app(make_settings()) as plain, asgi_client(plain) as c:
        whole = await _pages(c, "t1", 1000)  # Redis alone, before any trim
        resumed = (
            await c.get("/v1/sessions/t1/events", params={"follow": "false", "after": "120-0"})
        ).content
    await _archive_all(redis_client, engine)
    assert len(await streams.read_log(sk, count=1000)) == HOT
    async with running_app(make_settings(database_url=database_url)) as app, asgi_client(app) as c:
        for limit in (1, 49, 250, 251, 1000):
            assert await _pages(c, "t1", limit) == whole
        r = await c.get("/v1/sessions/t1/events", params={"follow": "false", "after": "120-0"})
        assert r.content == resumed  # byte for byte
        lines = [orjson.loads(x) for x in r.content.splitlines()]
        assert [x["id"] for x in lines] == [f"{n}-0" for n in range(121, 301)]
        ready = (await c.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["archive_backlog"] == 0
        assert ready["archive_lag_target_s"] == 5.0
        scrape = (await c.get("/metrics")).text
        assert "streamward_archive_lag_seconds 0.0" in scrape
        assert "streamward_archive_backlog_sessions 0.0" in scrape
        # ownership history: the archived acquire/release, merged with Redis's
        answer = (await c.get("/admin/sessions/t1/history", headers=_admin())).json()
        assert answer["record"] is True  # the live page says older moves come from it
        hist = answer["events"]
        assert [e["event"] for e in hist] == ["released", "acquired"]
        await redis_client.delete(sk.history)  # Redis forgot: the record still knows
        again = (await c.get("/admin/sessions/t1/history", headers=_admin())).json()["events"]
        assert again == hist


def _admin() -> dict[str, str]:
    from tests.api.helpers import ADMIN_TOKEN

    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _record_ids(c: httpx.AsyncClient, limit: int, **params: str | int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        q: dict[str, str | int] = {"limit": limit, "source": "record", **params}
        if cursor:
            q["cursor"] = cursor
        r = await c.get("/v1/sessions", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [s["session_id"] for s in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            assert len(body["items"]) <= limit
            return seen
        assert len(body["items"]) == limit  # exact pages from the record too


async def test_listing_from_the_record_is_keyset_paged_newest_first_with_filters(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, store: LeaseStore,
    keys: Keys, engine: AsyncEngine, database_url: str,
) -> None:  # fmt: skip
    streams = Streams(redis_client, keys)
    for i in range(7):
        sk = keys.session("default", f"l{i}")
        await write_log(store, sk, 1, 2)
        await streams.set_meta(
            sk, created_ms=1_000 + i, route_id="even" if i % 2 == 0 else "odd",
            type="chat" if i == 3 else "default", metadata=f'{{"n": {i}, "t": "x"}}',
        )  # fmt: skip
        await streams.touch_session(sk)
    await _archive_all(redis_client, engine)
    async with running_app(make_settings(database_url=database_url)) as app, asgi_client(app) as c:
        newest_first = [f"l{i}" for i in range(6, -1, -1)]
        assert await _record_ids(c, 3, sort="created") == newest_first
        assert await _record_ids(c, 3, sort="created", order="asc") == newest_first[::-1]
        assert sorted(await _record_ids(c, 2, sort="updated", order="asc")) == sorted(newest_first)
        assert await _record_ids(c, 2, sort="created", route="even") == ["l6", "l4", "l2", "l0"]
        assert await _record_ids(c, 2, sort="created", type="chat") == ["l3"]
        assert await _record_ids(c, 2, sort="created", **{"metadata.n": "5"}) == ["l5"]
        assert await _record_ids(c, 2, sort="created", **{"metadata.t": "y"}) == []
        assert await _record_ids(
            c, 2, sort="created", created_after="1970-01-01T00:00:01.004Z"
        ) == ["l6", "l5"]
        # record-only filters choose the record by themselves (source=auto)
        meta = (await c.get("/v1/sessions", params={"metadata": '{"route_id": "odd"}'})).json()
        assert [s["session_id"] for s in meta["items"]] == ["l5", "l3", "l1"]
        ranged = await c.get(
            "/v1/sessions",
            params={
                "created_from": "1970-01-01T00:00:01.002Z",
                "created_to": "1970-01-01T00:00:01.004Z",
                "sort": "created",
            },
        )
        assert [s["session_id"] for s in ranged.json()["items"]] == ["l3", "l2"]
        # the older r. cursor still pages newest created first
        page = await c.get("/v1/sessions", params={"cursor": "r.1004.l4", "sort": "created"})
        assert [s["session_id"] for s in page.json()["items"]] == ["l3", "l2", "l1", "l0"]
        bad = await c.get("/v1/sessions", params={"metadata": "[1]"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_metadata"
        bad = await c.get("/v1/sessions", params={"cursor": "r.x.y"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
        # a Redis listing's cursor is not the record's
        redis_page = (await c.get("/v1/sessions", params={"limit": 2})).json()
        r = await c.get(
            "/v1/sessions", params={"cursor": redis_page["next_cursor"], "source": "record"}
        )
        assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"
    async with running_app(make_settings()) as plain, asgi_client(plain) as c:
        for params in ({"session_key": "k"}, {"source": "record"}):
            r = await c.get("/v1/sessions", params=params)
            assert r.status_code == 422 and r.json()["code"] == "record_not_configured"
        r = await c.get("/v1/sessions", params={"route_id": "even", "sort": "created"})
        assert [s["session_id"] for s in r.json()["items"]] == ["l6", "l4", "l2", "l0"]


async def test_database_down_redis_serves_and_archive_reads_answer_503(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, store: LeaseStore,
    keys: Keys, engine: AsyncEngine,
) -> None:  # fmt: skip
    streams = Streams(redis_client, keys)
    sk = keys.session("default", "o1")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 100)
    await _archive_all(redis_client, engine)
    dead = f"postgresql://sw@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    async with running_app(make_settings(database_url=dead)) as app, asgi_client(app) as c:
        assert (await c.get("/readyz")).status_code == 200  # Redis alone makes it ready
        tail = await c.get("/v1/sessions/o1/transcript", params={"after": f"{100 - HOT}-0"})
        assert tail.status_code == 200 and len(tail.json()["items"]) == HOT  # hot tail: Redis
        old = await c.get("/v1/sessions/o1/transcript")
        assert old.status_code == 503 and old.json()["code"] == "archive_unavailable"
        hist = await c.get("/admin/sessions/o1/history", headers=_admin())
        assert hist.status_code == 200  # Redis's recent history
