"""`streamward db` and `streamward archiver` as real processes: the unmigrated refusal, a
kill -9 mid-batch (no duplicates, no gaps), PostgreSQL stopped under load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.pgserver import PostgresServer
from streamward.tools.server import RedisServer
from tests.record.helpers import archived_seqs, write_log

CLI = [sys.executable, "-m", "streamward.tools"]


def _env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STREAMWARD_REDIS_URL": redis_url,
        "STREAMWARD_DATABASE_URL": database_url,
        **extra,
    }


def test_db_commands_and_the_unmigrated_refusal(
    redis_server: RedisServer, database_url: str
) -> None:
    env = _env(redis_server.url, database_url)
    refused = subprocess.run(
        [*CLI, "archiver"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "run `streamward db upgrade`" in refused.stdout
    cur = subprocess.run([*CLI, "db", "current"], env=env, capture_output=True, text=True)
    assert cur.returncode == 1 and "current none" in cur.stdout
    up = subprocess.run([*CLI, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert subprocess.run([*CLI, "db", "current"], env=env, capture_output=True).returncode == 0
    down = subprocess.run(
        [*CLI, "db", "downgrade", "base"], env=env, capture_output=True, text=True
    )
    assert down.returncode == 0 and "at revision none" in down.stdout


def _start_archiver(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A real `streamward archiver` process (sync: started before the awaits that watch it)."""
    return subprocess.Popen([*CLI, "archiver"], env=env)


async def _wait_archived(
    engine: AsyncEngine, sk: SessionKeys, n: int, timeout_s: float
) -> list[int]:
    seqs: list[int] = []
    for _ in range(int(timeout_s * 10)):
        seqs = await archived_seqs(engine, sk)
        if len(seqs) >= n:
            break
        await asyncio.sleep(0.1)
    return seqs


async def test_kill_9_mid_batch_leaves_no_duplicates_and_no_gaps(
    redis_server: RedisServer, redis_client: aioredis.Redis, store: LeaseStore, keys: Keys,
    engine: AsyncEngine, database_url: str,
) -> None:  # fmt: skip
    streams = Streams(redis_client, keys)
    sessions = [keys.session("p1", f"k{i}") for i in range(6)]
    for sk in sessions:
        await streams.touch_session(sk)
        await write_log(store, sk, 1, 3000)
    env = _env(redis_server.url, database_url, STREAMWARD_ARCHIVE_BATCH_ENTRIES="50",
               STREAMWARD_ARCHIVE_CLAIM_S="1")  # fmt: skip
    for _round in range(3):  # killed while it writes, three times over
        proc = _start_archiver(env)
        await _wait_archived(engine, sessions[0], 200, 30)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start_archiver(env)
    try:
        for sk in sessions:
            # primary keys make a duplicate impossible; equality says no gap either
            assert await _wait_archived(engine, sk, 3000, 60) == list(range(1, 3001))
        # the killed ones may have archived everything: entries only this process can
        # archive show it is up (a SIGTERM while it still starts would kill it, -15)
        await write_log(store, sessions[0], 3001, 10)
        assert await _wait_archived(engine, sessions[0], 3010, 60) == list(range(1, 3011))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


async def test_postgres_down_30s_under_load_then_the_archive_catches_up(
    redis_server: RedisServer, redis_client: aioredis.Redis, store: LeaseStore, keys: Keys,
    engine: AsyncEngine, database_url: str, pg_server: PostgresServer,
) -> None:  # fmt: skip
    streams = Streams(redis_client, keys)
    env = _env(redis_server.url, database_url, STREAMWARD_ARCHIVE_HOT_TAIL_ENTRIES="10")
    proc = _start_archiver(env)
    try:
        sk0 = keys.session("p1", "d0")
        await streams.touch_session(sk0)
        await write_log(store, sk0, 1, 100)
        assert await _wait_archived(engine, sk0, 100, 30) == list(range(1, 101))
        pg_server.stop()
        written = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        i = 0
        while loop.time() < end:  # ingest keeps working on Redis alone
            sk = keys.session("p1", f"d{i + 1}")
            await streams.touch_session(sk)
            await write_log(store, sk, 1, 200)
            written.append(sk)
            i += 1
            await asyncio.sleep(0.5)
        for sk in written:  # nothing unarchived was trimmed
            assert len(await streams.read_log(sk, count=1000)) == 200
        pg_server.start()
        for sk in written:
            assert await _wait_archived(engine, sk, 200, 60) == list(range(1, 201))
    finally:
        if not pg_server.running:
            pg_server.start()
        proc.terminate()
        assert proc.wait(30) == 0
