"""The record under the invoke bench (`streamward bench invoke --archiver`): an embedded
PostgreSQL, one `streamward archiver` process, and the archive lag sampled from Redis every
100 ms while the bench runs; then how long the archive takes to catch up. Then its
throughput: with the archiver stopped (SIGSTOP), a backlog of ~1 KB entries is written to
Redis, and the time the archiver takes to drain it once continued (SIGCONT) is measured."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from streamward.lua.archive import ArchiveCalls
from streamward.lua.indexes import Indexes
from streamward.lua.keys import Keys
from streamward.lua.store import Entry, LeaseStore

SAMPLE_S = 0.1
CATCH_UP_TIMEOUT_S = 300.0
# the drain backlog: entries of about this size (the record's sizing example: ~1 KB each)
DRAIN_ENTRY_BYTES = 1000
DRAIN_PER_SESSION = 200
DRAIN_BATCH = 100


@dataclass
class ArchiveFigures:
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    samples: int
    entries_archived: int
    catch_up_s: float
    entries_per_s: float  # archived under the invoke load, over the run and its catch-up
    # throughput: a backlog written while the archiver was stopped, drained once continued
    drain_sessions: int = 0
    drain_entries: int = 0
    drain_s: float = 0.0
    drain_entries_per_s: float = 0.0


class LagSampler:
    """Samples the archiver's lag (the longest-due session's wait) until stopped."""

    def __init__(self, redis_url: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.calls = ArchiveCalls(self.client, Keys())
        self.lags: list[float] = []
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def _lag_s(self) -> float:
        now = await self.calls.now_ms()
        oldest = await self.calls.oldest_due_ms(now)
        return 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)

    async def _loop(self) -> None:
        while True:
            self.lags.append(await self._lag_s())
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self.started = time.monotonic()
        self._task = asyncio.create_task(self._loop())

    async def _entries_in_redis(self) -> int:
        """Every transcript entry in the session logs (what a caught-up archive holds)."""
        total = 0
        async for key in self.client.scan_iter(match=f"{Keys().prefix}:{{*}}:log", count=1000):
            total += int(await self.client.xlen(key))
        return total

    async def finish(self, database_url: str) -> ArchiveFigures:
        """Stop sampling, wait for the archive to catch up, count what it holds.

        Caught up: nothing due *and* every entry of the logs archived. Nothing due alone is
        not enough: a session reaches the archiver's work set only when it is next fed, so
        right after a short run nothing may be due yet with nothing archived."""
        if self._task is not None:
            self._task.cancel()
        ran_s = time.monotonic() - self.started
        t0 = time.monotonic()
        expected = await self._entries_in_redis()
        conn: Any = await asyncpg.connect(database_url)
        try:
            while True:
                archived = int(await conn.fetchval("SELECT count(*) FROM transcript_entries"))
                caught_up = archived >= expected and await self._lag_s() == 0
                if caught_up or time.monotonic() - t0 >= CATCH_UP_TIMEOUT_S:
                    break
                await asyncio.sleep(SAMPLE_S)
        finally:
            await conn.close()
        catch_up_s = time.monotonic() - t0
        await self.client.aclose()
        lags = sorted(self.lags) or [0.0]
        return ArchiveFigures(
            lag_p50_s=round(statistics.median(lags), 3),
            lag_p99_s=round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3),
            lag_max_s=round(lags[-1], 3),
            samples=len(self.lags),
            entries_archived=archived,
            catch_up_s=round(catch_up_s, 2),
            entries_per_s=round(archived / (ran_s + catch_up_s), 1) if ran_s else 0.0,
        )


async def measure_drain(
    redis_url: str, database_url: str, archiver_pid: int, sessions: int
) -> tuple[int, float]:
    """Stop the archiver, write ``sessions`` x ``DRAIN_PER_SESSION`` entries to Redis, continue
    it and time until PostgreSQL holds them all: (entries, seconds)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    conn: Any = await asyncpg.connect(database_url)
    count = "SELECT count(*) FROM transcript_entries"
    os.kill(archiver_pid, signal.SIGSTOP)
    try:
        keys = Keys()
        store, index = LeaseStore(client, keys), Indexes(client, keys)
        text = "x" * (DRAIN_ENTRY_BYTES - 40)  # ~1 KB as JSON with its other fields
        for n in range(sessions):
            sk = keys.session("default", f"archive-drain-{n}")
            await index.touch_session(sk)  # what an invoke does: the archiver's feed sees it
            lease = await store.acquire(sk, "bench-drain", "i1", 60_000)
            for first in range(1, DRAIN_PER_SESSION + 1, DRAIN_BATCH):
                batch = [
                    Entry(seq=q, type="run.output", data={"text": text, "i": q}, run_id="run_1")
                    for q in range(first, min(first + DRAIN_BATCH, DRAIN_PER_SESSION + 1))
                ]
                await store.ingest(sk, "run_1", lease.token, batch)
            await store.release(sk, "bench-drain", "i1", lease.token)
        want = int(await conn.fetchval(count)) + sessions * DRAIN_PER_SESSION
    finally:
        os.kill(archiver_pid, signal.SIGCONT)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < CATCH_UP_TIMEOUT_S:
            if int(await conn.fetchval(count)) >= want:
                break
            await asyncio.sleep(SAMPLE_S / 2)
        return sessions * DRAIN_PER_SESSION, time.monotonic() - t0
    finally:
        await conn.close()
        await client.aclose()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a PostgreSQL postmaster and its backends), from /proc."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            pids.append(int(entry))
    return pids
