"""A handler's ``ctx.transcript()`` below Redis's hot tail: a real API process with the
record, a real PostgreSQL, a real Redis and an in-process runner. The runner reads what the
archiver trimmed through the API's admin transcript page and sees exactly the log Redis held
before the trim: ids, order, data, tokens and times."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import LogEntry, Streams
from streamward.runner import RunContext, Session, SessionContext, TranscriptUnavailable
from streamward.runner.archive_reads import ApiTranscript
from streamward.runner.replica import Replica
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer, free_port
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.record.helpers import write_log
from tests.record.test_api_reads import HOT, _archive_all
from tests.runner.test_replica import _submit, settings_for, wait_for

Reads = dict[str, Any]


def reading_host(reads: Reads) -> type[Session]:
    """Reads the transcript every way a handler can, as the input asks, into ``reads``."""

    class Reader(Session):
        async def activate(self, ctx: SessionContext) -> None:
            self.sctx = ctx

        async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
            after, limit, page = input["after"], input["limit"], input["page"]
            reads["run"] = await ctx.transcript(after, limit)
            reads["run_paged"] = [e async for e in ctx.history(after, page=page)]
            reads["session"] = await self.sctx.transcript(after, limit)
            reads["started_seq"] = ctx.started_seq  # last: the test waits for it
            yield {"read": len(reads["run"])}

    return Reader


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        await r.stop()


async def test_a_handler_reads_the_archive_below_the_hot_tail_like_redis(
    replicas: list[Replica], fleet: Fleet, redis_server: RedisServer,
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine,
    database_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    streams, sk = Streams(redis_client, keys), keys.session("default", "deep")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 300)
    whole = await streams.read_log(sk, count=1000)  # Redis's log before any trim
    await _archive_all(redis_client, engine)
    assert (await streams.read_log(sk, count=1))[0].seq == 300 - HOT + 1  # trimmed below
    api = await asyncio.to_thread(fleet.start_api, env={"STREAMWARD_DATABASE_URL": database_url})
    reads: Reads = {}
    replica = Replica(settings_for(redis_server.url, api.url, fleet, tmp_path), reading_host(reads))
    replicas.append(replica)
    await replica.start()
    cases = [
        (0, 1000, 200),  # the whole transcript: archive, then the hot tail
        (120, 7, 49),  # wholly below the hot tail
        (240, 20, 7),  # a page across the boundary
        (260, 1000, 3),  # wholly in the hot tail (no API call needed)
    ]
    for n, (after, limit, page) in enumerate(cases):
        reads.clear()
        inp = orjson.dumps({"after": after, "limit": limit, "page": page}).decode()
        await _submit(store, streams, sk, f"run_r{n}", inp)
        await wait_for(lambda: "started_seq" in reads, 20, f"the run reading after {after}")
        # the log as it was: the untrimmed copy, then what the earlier runs added (nothing
        # trims meanwhile: no archiver runs)
        full = whole + await streams.read_log(sk, "300-0", count=1000)
        later = [e for e in full if e.seq > after]
        # a run's earlier transcript stops below its own run.started
        earlier = [e for e in later if e.seq < reads["started_seq"]]
        assert _ids(reads["run"]) == _ids(earlier[:limit])
        assert reads["run"] == earlier[:limit]  # data, run ids, tokens and times too
        assert reads["run_paged"] == earlier
        # the session's whole transcript, as far as it was written when the run read it
        got = reads["session"]
        assert got == later[: len(got)] and len(got) >= len(earlier[:limit])


def _ids(entries: list[LogEntry]) -> list[str]:
    return [e.id for e in entries]


async def test_below_the_hot_tail_a_database_outage_raises_rather_than_skipping(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, store: LeaseStore,
    keys: Keys, engine: AsyncEngine, database_url: str,
) -> None:  # fmt: skip
    from tests.api.helpers import ADMIN_TOKEN

    streams, sk = Streams(redis_client, keys), keys.session("default", "gone")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 100)
    whole = await streams.read_log(sk, count=1000)
    await _archive_all(redis_client, engine)
    settings = make_settings(database_url=database_url)
    async with running_app(settings) as app, asgi_client(app) as http:
        reader = ApiTranscript(http, "http://api", ADMIN_TOKEN)
        assert await reader.page(sk, 10, 5) == whole[10:15]
        wrong = ApiTranscript(http, "http://api", "not-the-token")
        with pytest.raises(TranscriptUnavailable, match=r"40[13]"):
            await wrong.page(sk, 0, 5)
    dead = f"postgresql://sw@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    async with running_app(make_settings(database_url=dead)) as app, asgi_client(app) as http:
        reader = ApiTranscript(http, "http://api", ADMIN_TOKEN)
        with pytest.raises(TranscriptUnavailable, match="archive_unavailable"):
            await reader.page(sk, 0, 5)
        # the hot tail alone needs no database
        assert await reader.page(sk, 100 - HOT, 5) == whole[100 - HOT : 105 - HOT]
    down = ApiTranscript(httpx.AsyncClient(), f"http://127.0.0.1:{free_port()}", ADMIN_TOKEN)
    with pytest.raises(TranscriptUnavailable, match="unreachable"):
        await down.page(sk, 0, 5)
