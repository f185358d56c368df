"""Retention in the record: per-project ages, bounded deletes, nothing young touched."""

from __future__ import annotations

import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record import retention
from streamward.api.record.archiver import Archiver, ArchiveSettings
from streamward.api.record.retention import DAY_MS, RetentionPolicy
from streamward.api.record.tables import sessions, transcript_entries
from streamward.lua.archive import ArchiveCalls
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.record.helpers import write_log


async def _count(engine: AsyncEngine, table: sa.Table, project: str) -> int:
    async with engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table).where(table.c.project == project)
        return int((await conn.execute(q)).scalar_one())


async def test_per_project_retention_deletes_old_rows_in_bounded_batches(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    streams = Streams(redis_client, keys)
    for project in ("short", "long"):
        sk = keys.session(project, "s")
        await streams.touch_session(sk)
        await write_log(store, sk, 1, 120)
    arch = Archiver(
        streams, ArchiveCalls(redis_client, keys), engine, ArchiveSettings(batch_delay_s=0)
    )
    await arch.tick()
    assert await _count(engine, transcript_entries, "short") == 120
    now = await streams.now_ms()
    # a week later: "short" keeps 3 days, everything else the default 30
    policy = RetentionPolicy(default_days=30, by_project={"short": 3}, batch_rows=25)
    deleted = await retention.enforce(engine, policy, now + 7 * DAY_MS)
    assert await _count(engine, transcript_entries, "short") == 0
    assert await _count(engine, sessions, "short") == 0
    assert await _count(engine, transcript_entries, "long") == 120
    assert await _count(engine, sessions, "long") == 1
    assert deleted >= 120 + 1
    # a bounded pass: 3 statements of 25 rows at most, then it stops (the next pass goes on)
    tight = RetentionPolicy(default_days=1, batch_rows=25, max_batches=3)
    assert await retention.enforce(engine, tight, now + 2 * DAY_MS) == 75
    assert await _count(engine, transcript_entries, "long") == 45
