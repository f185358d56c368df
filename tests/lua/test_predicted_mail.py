"""``LeaseStore.enqueue(predict_mail=True)``: the holder the session's last append saw is mailed
in the append's own round trip (lua/store.py) — against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streamward.lua import autopipe
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.lua.helpers import LEASE_TTL_MS, REPLICA_TTL_MS, hold, inbox_runs


@pytest.fixture(autouse=True, params=["direct", "autopipeline"])
async def transport(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis
) -> AsyncIterator[None]:
    """Every test twice: each call on its own, and in the loop turn's auto-pipeline (the
    predicted mail is one unit of it: lua/autopipe.py)."""
    ap = autopipe.enable(redis_client) if request.param == "autopipeline" else None
    try:
        yield
    finally:
        if ap is not None:
            await ap.stop()
            autopipe.disable(redis_client)


async def _mails(redis_client: aioredis.Redis, keys: Keys, replica: str) -> int:
    return int(await redis_client.xlen(keys.replica(replica).mail))


async def test_the_seen_holder_is_mailed_with_the_append_and_a_moved_one_is_not_trusted(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    sk = keys.session("p", "s1")
    await store.scripts.load_all(redis_client)  # as the API does at start
    for r in ("r1", "r2"):
        await store.register_replica(r, f"{r}-inc", REPLICA_TTL_MS)
    await store.acquire(sk, "r1", "r1-inc", LEASE_TTL_MS)
    first = await store.enqueue(sk, "run_1", "1", predict_mail=True)
    assert first.holder == ("r1", "r1-inc") and first.mailed is None  # nothing seen yet
    second = await store.enqueue(sk, "run_2", "2", predict_mail=True)
    assert second.mailed == second.holder == ("r1", "r1-inc")
    assert await _mails(redis_client, keys, "r1") == 1  # the predicted mail, after the append
    [mail] = await Streams(redis_client, keys).read_mail("r1", "0-0", block_ms=1)
    assert (mail.kind, mail.multitask) == ("input", "enqueue")  # the input's mode, named
    # the session moves to r2 while r1 stays alive: r1 gets a spare mail, and the caller sees
    # that the holder differs (so it mails r2 itself, api/invoke.py wake_owner)
    await redis_client.delete(sk.lease)
    await store.acquire(sk, "r2", "r2-inc", LEASE_TTL_MS)
    moved = await store.enqueue(sk, "run_3", "3", predict_mail=True)
    assert moved.holder == ("r2", "r2-inc") and moved.mailed != moved.holder
    assert await inbox_runs(redis_client, sk.inbox) == ["run_1", "run_2", "run_3"]


async def test_a_flushed_script_cache_never_appends_twice(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    sk = keys.session("p", "s1")
    await hold(store, sk)
    await store.enqueue(sk, "run_1", "1", predict_mail=True)  # the holder is remembered
    await redis_client.script_flush()  # a Redis restart or failover loses the script cache
    again = await store.enqueue(sk, "run_2", "2", predict_mail=True)
    assert again.holder == ("r1", "r1-inc")
    await redis_client.script_flush()
    await redis_client.script_load(store.scripts.script("enqueueInput").src.source)
    # the append runs, the mail's script is missing: no second append, the caller notifies
    third = await store.enqueue(sk, "run_3", "3", predict_mail=True)
    assert third.mailed is None and third.holder == ("r1", "r1-inc")
    fourth = await store.enqueue(sk, "run_4", "4", predict_mail=True)  # loaded again since
    assert fourth.mailed == ("r1", "r1-inc")
    assert await inbox_runs(redis_client, sk.inbox) == ["run_1", "run_2", "run_3", "run_4"]


async def test_the_predicted_touch_never_adds_a_session_back_to_the_listings(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    sk = keys.session("p", "s1")
    await hold(store, sk)
    await store.scripts.load_all(redis_client)
    await store.enqueue(sk, "run_1", "1", predict_mail=True)
    pk = keys.project_index("p")
    await redis_client.zadd(keys.sessions, {sk.ref: 1})
    await redis_client.zadd(pk.updated, {"s1": 1})
    await store.enqueue(sk, "run_2", "2", predict_mail=True)
    assert float(await redis_client.zscore(keys.sessions, sk.ref) or 0) > 1  # touched
    assert float(await redis_client.zscore(pk.updated, "s1") or 0) > 1
    # taken out of the indexes (a delete): an invoke with a remembered holder leaves it out
    await redis_client.zrem(keys.sessions, sk.ref)
    await redis_client.zrem(pk.updated, "s1")
    await store.enqueue(sk, "run_3", "3", predict_mail=True)
    assert await redis_client.zscore(keys.sessions, sk.ref) is None
    assert await redis_client.zscore(pk.updated, "s1") is None
