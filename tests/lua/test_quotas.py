"""admitInvoke-2 (a project's token bucket and live-sessions count) and the quota checks of
enqueueInput-5, on a real redis-server. Time is passed to the script (ARGV now ms), so the
refill is checked by logic, not by waiting."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streamward.lua import errors as E
from streamward.lua.keys import Keys
from streamward.lua.quotas import QuotaCalls
from streamward.lua.replies import Admission
from streamward.lua.store import LeaseStore


@pytest.fixture
def quotas(store: LeaseStore, keys: Keys) -> QuotaCalls:
    return QuotaCalls(store.client, keys, store.scripts)


async def test_bucket_burst_then_refuse_then_refill(quotas: QuotaCalls, keys: Keys) -> None:
    sk = keys.session("proj", "s1")

    async def admit(now_ms: int) -> Admission:
        return await quotas.admit(sk, rate_per_s=2.0, burst=3, max_live=0, now_ms=now_ms)

    t0 = 1_000_000
    for left in (2.0, 1.0, 0.0):  # a full bucket: the burst passes at once
        adm = await admit(t0)
        assert adm.tokens_left == pytest.approx(left) and adm.may_create and adm.live is None
    with pytest.raises(E.RateLimited) as refused:
        await admit(t0)
    assert refused.value.retry_after_ms == 500  # one token at 2 per second
    assert refused.value.retry_after_s == 1
    with pytest.raises(E.RateLimited) as refused:  # 200 ms later: 0.4 token, 300 ms to go
        await admit(t0 + 200)
    assert refused.value.retry_after_ms == 300
    adm = await admit(t0 + 500)  # refilled one token
    assert adm.tokens_left == pytest.approx(0.0)
    # a long pause refills to the burst, never beyond it
    adm = await admit(t0 + 3_600_000)
    assert adm.tokens_left == pytest.approx(2.0)


async def test_refund_gives_a_token_back_up_to_the_burst(
    quotas: QuotaCalls, keys: Keys, redis_client: aioredis.Redis
) -> None:
    sk = keys.session("proj", "s1")
    t0 = 5_000_000
    await quotas.admit(sk, rate_per_s=1.0, burst=1, max_live=0, now_ms=t0)
    with pytest.raises(E.RateLimited):
        await quotas.admit(sk, rate_per_s=1.0, burst=1, max_live=0, now_ms=t0)
    assert await quotas.refund("proj", rate_per_s=1.0, burst=1, now_ms=t0) == pytest.approx(1.0)
    assert await quotas.refund("proj", rate_per_s=1.0, burst=1, now_ms=t0) == pytest.approx(1.0)
    await quotas.admit(sk, rate_per_s=1.0, burst=1, max_live=0, now_ms=t0)
    # the bucket key expires once it would be full again: an idle project leaves no key
    assert 0 < await redis_client.pttl(keys.quota("proj").bucket) <= 2_000


async def test_no_rate_limit_writes_no_bucket(
    quotas: QuotaCalls, keys: Keys, redis_client: aioredis.Redis
) -> None:
    adm = await quotas.admit(keys.session("proj", "s1"), rate_per_s=0, burst=0, max_live=0)
    assert adm.tokens_left is None and adm.may_create and not adm.reserved
    assert await redis_client.exists(keys.quota("proj").bucket, keys.quota("proj").live) == 0


async def test_live_limit_reserves_until_full_and_counts_members_once(
    quotas: QuotaCalls, keys: Keys
) -> None:
    a, b, c = (keys.session("proj", s) for s in ("a", "b", "c"))
    first = await quotas.admit(a, rate_per_s=0, burst=0, max_live=2)
    assert first.reserved and first.may_create and first.live == 1
    again = await quotas.admit(a, rate_per_s=0, burst=0, max_live=2)  # counted already
    assert not again.reserved and again.may_create and again.live == 1
    assert (await quotas.admit(b, rate_per_s=0, burst=0, max_live=2)).reserved
    full = await quotas.admit(c, rate_per_s=0, burst=0, max_live=2)
    assert not full.may_create and not full.reserved and full.live == 2
    warm = await quotas.admit(a, rate_per_s=0, burst=0, max_live=2)  # a member passes
    assert warm.may_create
    assert await quotas.live_sessions("proj") == 2
    assert await quotas.live_sessions("other") == 0


async def test_retire_forgets_a_live_session(store: LeaseStore, keys: Keys) -> None:
    from streamward.lua.streams import Streams

    quotas = QuotaCalls(store.client, keys, store.scripts)
    sk = keys.session("proj", "a")
    await quotas.admit(sk, rate_per_s=0, burst=0, max_live=5)
    await store.enqueue(sk, "run_1", "{}")
    assert await quotas.live_sessions("proj") == 1
    await Streams(store.client, keys).retire_session(sk, "deleted", "manual", 60_000)
    assert await quotas.live_sessions("proj") == 0


async def test_enqueue_inbox_full_writes_nothing(
    store: LeaseStore, keys: Keys, redis_client: aioredis.Redis
) -> None:
    sk = keys.session("proj", "s1")
    for n in range(2):
        await store.enqueue(sk, f"run_{n}", "{}", max_pending=2)
    meta = await redis_client.hgetall(sk.meta)
    with pytest.raises(E.InboxFull) as full:
        await store.enqueue(sk, "run_x", "{}", idempotency_key="k-x", max_pending=2)
    assert (full.value.pending, full.value.limit) == (2, 2)
    assert await redis_client.xlen(sk.inbox) == 2
    assert await redis_client.exists(sk.idempotency("k-x")) == 0
    assert await redis_client.hgetall(sk.meta) == meta
    # a limit of 0 is no limit; an idempotent retry of an appended input still answers
    await store.enqueue(sk, "run_y", "{}", idempotency_key="k-y", max_pending=0)
    dup = await store.enqueue(sk, "run_z", "{}", idempotency_key="k-y", max_pending=2)
    assert dup.duplicate and dup.run_id == "run_y"


async def test_enqueue_may_not_create_refuses_new_and_retired_sessions_only(
    store: LeaseStore, keys: Keys, redis_client: aioredis.Redis
) -> None:
    from streamward.lua.streams import Streams

    new = keys.session("proj", "new")
    with pytest.raises(E.SessionLimit):
        await store.enqueue(new, "run_1", "{}", may_create=False)
    assert await redis_client.exists(new.meta, new.inbox) == 0
    old = keys.session("proj", "old")
    created = await store.enqueue(old, "run_1", "{}")
    assert created.created and not created.revived
    warm = await store.enqueue(old, "run_2", "{}", may_create=False)  # exists: passes
    assert not warm.created
    await Streams(store.client, keys).retire_session(old, "deleted", "manual", 60_000)
    with pytest.raises(E.SessionLimit):  # retired: reviving it would create a live session
        await store.enqueue(old, "run_3", "{}", may_create=False)
    revived = await store.enqueue(old, "run_3", "{}")
    assert revived.revived and not revived.created
