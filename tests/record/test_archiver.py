"""The archiver against a real Redis and a real PostgreSQL: the archive equals the log,
Redis keeps only a hot tail, several archivers at once write each entry once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record import db
from streamward.api.record.archiver import Archiver, ArchiveSettings
from streamward.lua.archive import ArchiveCalls
from streamward.lua.entries import Entry
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.record.helpers import archived_seqs, write_log


def _archiver(client: aioredis.Redis, engine: AsyncEngine, **kw: Any) -> Archiver:
    keys = Keys()
    return Archiver(
        Streams(client, keys),
        ArchiveCalls(client, keys),
        engine,
        ArchiveSettings(**{"batch_delay_s": 0, **kw}),
    )


async def _drain(arch: Archiver) -> None:
    """Passes until the work set holds nothing due."""
    for _ in range(50):
        await arch.tick()
        if await arch.calls.oldest_due_ms(await arch.calls.now_ms()) is None:
            return
    raise AssertionError("work set never drained")


async def test_archive_equals_the_redis_log_after_10k_entries(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    sk = keys.session("p1", "s1")
    await Streams(redis_client, keys).touch_session(sk)
    await write_log(store, sk, 1, 10_000)
    before = await Streams(redis_client, keys).read_log(sk, "0-0", count=20_000)
    arch = _archiver(redis_client, engine, hot_tail_entries=1000)
    await _drain(arch)
    assert await archived_seqs(engine, sk) == list(range(1, 10_001))
    archived = await db.read_entries(engine, "p1", "s1", 0, 2**62, 20_000)
    assert archived == before  # ids, types, data (key order too), run ids, tokens, ts
    # Redis keeps the hot tail only
    after = await Streams(redis_client, keys).read_log(sk, "0-0", count=20_000)
    assert [e.seq for e in after] == list(range(9001, 10_001))


async def test_nothing_unarchived_is_trimmed_and_a_busy_session_is_revisited(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    sk = keys.session("p1", "s2")
    streams = Streams(redis_client, keys)
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 30, release=False)  # still owned: more may come
    arch = _archiver(redis_client, engine, hot_tail_entries=5)
    await arch.tick()
    assert await archived_seqs(engine, sk) == list(range(1, 31))
    assert [e.seq for e in await streams.read_log(sk)] == list(range(26, 31))
    # owned: due again after the revisit interval, without a new invoke
    assert await redis_client.zscore(keys.archive_dirty, sk.ref) is not None


async def test_several_archivers_at_once_write_each_entry_once(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    streams = Streams(redis_client, keys)
    sessions = [keys.session("p1", f"m{i}") for i in range(8)]
    for sk in sessions:
        await streams.touch_session(sk)
        await write_log(store, sk, 1, 700)
    archivers = [_archiver(redis_client, engine, batch_entries=100) for _ in range(3)]
    await asyncio.gather(*(_drain(a) for a in archivers))
    for sk in sessions:
        assert await archived_seqs(engine, sk) == list(range(1, 701))
    assert sum(a.stats.entries for a in archivers) >= 8 * 700


async def test_reads_across_the_hot_tail_boundary_return_identical_ids_and_order(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    from streamward.api.record.reads import span

    streams = Streams(redis_client, keys)
    sk = keys.session("p1", "h1")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 500)
    whole = await streams.read_log(sk, "0-0", count=1000)  # before any trim
    await _drain(_archiver(redis_client, engine, hot_tail_entries=120))
    assert (await streams.read_log(sk, "0-0", count=1))[0].seq == 381  # trimmed below 381

    async def page(after: str, n: int) -> list[Entry]:
        return await span(engine, streams, sk, after, n, await streams.read_log(sk, after, n))

    for size in (1, 7, 100, 379, 380, 381, 1000):  # pages ending before, at, across the edge
        got: list[Entry] = []
        after = "0-0"
        while batch := await page(after, size):
            got += batch
            after = batch[-1].id
        assert got == whole, size
    assert await page("500-0", 10) == []
    assert await page("379-0", 3) == whole[379:382]


async def test_a_time_based_hot_tail_keeps_every_young_entry(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    streams = Streams(redis_client, keys)
    sk = keys.session("p1", "young")
    await streams.touch_session(sk)
    now = await streams.now_ms()
    lease = await store.acquire(sk, "r1", "i1", 60_000)
    # entries 1..60 written an hour ago, 61..100 a minute ago
    old = [Entry(seq=s, type="run.output", data={}, ts_ms=now - 3_600_000) for s in range(1, 61)]
    new = [Entry(seq=s, type="run.output", data={}, ts_ms=now - 60_000) for s in range(61, 101)]
    await store.ingest(sk, "run_1", lease.token, old + new)
    await store.release(sk, "r1", "i1", lease.token)
    # the count alone would keep 10; the last 10 minutes keep 40
    await _drain(_archiver(redis_client, engine, hot_tail_entries=10, hot_tail_s=600))
    assert [e.seq for e in await streams.read_log(sk, count=1000)] == list(range(61, 101))
    assert await archived_seqs(engine, sk) == list(range(1, 101))


async def test_activity_is_archived_after_the_batch_delay_not_at_once(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    sk = keys.session("p1", "delayed")
    await Streams(redis_client, keys).touch_session(sk)
    await write_log(store, sk, 1, 10)
    arch = _archiver(redis_client, engine, batch_delay_s=3600)
    assert await arch.tick() == 0  # seen, due in an hour: one later pass takes it all
    assert await archived_seqs(engine, sk) == []
    now = await arch.calls.now_ms()
    due = await redis_client.zscore(keys.archive_dirty, sk.ref)
    assert due is not None and now + 3_500_000 < due <= now + 3_600_000


async def test_runs_carry_input_size_outputs_and_error_from_their_entries(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    import sqlalchemy as sa

    from streamward.api.record.tables import runs

    streams = Streams(redis_client, keys)
    sk = keys.session("p1", "facts")
    await streams.touch_session(sk)
    lease = await store.acquire(sk, "r1", "i1", 60_000)
    started = {"replica_id": "r1", "attempt": 1, "input": {"text": "hello"}}
    await store.ingest(sk, "run_ok", lease.token, [
        Entry(seq=1, type="run.started", data=started),
        Entry(seq=2, type="run.completed", data={"outputs": 3}),
    ])  # fmt: skip
    await store.ingest(sk, "run_bad", lease.token, [
        Entry(seq=3, type="run.started", data={**started, "input": None, "input_bytes": 999}),
        Entry(seq=4, type="run.failed", data={"error": "boom", "error_type": "ValueError"}),
    ])  # fmt: skip
    await store.release(sk, "r1", "i1", lease.token)
    await _drain(_archiver(redis_client, engine))
    async with engine.connect() as conn:
        rows = {
            r.run_id: r
            for r in await conn.execute(sa.select(runs).where(runs.c.session_id == "facts"))
        }
    assert rows["run_ok"].status == "completed" and rows["run_ok"].outputs == 3
    assert rows["run_ok"].input_bytes == len(b'{"text":"hello"}') and rows["run_ok"].error is None
    assert rows["run_bad"].status == "failed" and rows["run_bad"].error == "boom"
    assert rows["run_bad"].input_bytes == 999 and rows["run_bad"].replica_id == "r1"


async def test_ingest_goes_on_after_the_trim_and_a_trimmed_seq_stays_a_duplicate(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys, engine: AsyncEngine
) -> None:
    streams = Streams(redis_client, keys)
    sk = keys.session("p1", "after-trim")
    await streams.touch_session(sk)
    await write_log(store, sk, 1, 50)
    await _drain(_archiver(redis_client, engine, hot_tail_entries=1))
    assert [e.seq for e in await streams.read_log(sk, count=100)] == [50]  # the last stays
    lease = await store.acquire(sk, "r1", "i1", 60_000)
    again = await store.ingest(sk, "run_1", lease.token, [Entry(seq=7, type="x", data={})])
    assert (again.accepted, again.duplicates) == (0, 1)  # archived and trimmed: still known
    more = await store.ingest(sk, "run_1", lease.token, [Entry(seq=51, type="x", data={})])
    assert more.accepted == 1 and more.last_seq == 51
    with pytest.raises(ValueError, match="at least 1"):
        ArchiveSettings(hot_tail_entries=0)
