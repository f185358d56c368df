"""The callback outbox's scripts on a real Redis: once per delivery id, claims with a lease,
outcomes recorded only under the claim that is current."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.outbox import Outbox
from streamward.lua.store import LeaseStore

FIELDS: dict[str, str | int] = {
    "run_id": "run_a",
    "project": "p",
    "session_id": "s",
    "event": "run.completed",
    "seq": 3,
    "url": "http://x/",
    "body": "{}",
}


def _outbox(store: LeaseStore) -> Outbox:
    return Outbox(store.client, store.keys, store.scripts)


async def test_added_once_per_delivery_id(redis_client: aioredis.Redis, store: LeaseStore) -> None:
    ob = _outbox(store)
    assert await ob.add("dlv_1", "run_a", FIELDS, 60_000) is True
    assert await ob.add("dlv_1", "run_a", {**FIELDS, "body": "other"}, 60_000) is False
    [d] = await ob.run_deliveries("run_a")
    assert (d.id, d.state, d.attempts, d.body, d.seq) == ("dlv_1", "pending", 0, "{}", 3)
    assert await ob.depth() == 1
    assert 0 < await redis_client.pttl(Keys().callback_delivery("dlv_1")) <= 60_000


async def test_a_claim_hides_the_delivery_and_only_the_current_claim_records(
    redis_client: aioredis.Redis, store: LeaseStore
) -> None:
    ob = _outbox(store)
    await ob.add("dlv_1", "run_a", FIELDS, 60_000)
    [held] = await ob.claim(60_000, 10)
    assert await ob.claim(60_000, 10) == []  # claimed: not due for anyone else
    await redis_client.zadd(Keys().callbacks_due, {"dlv_1": 0})  # as if that claim ran out
    # a 30 ms claim, then another worker takes it over once it has run out
    [first] = await ob.claim(30, 10)
    deadline = asyncio.get_running_loop().time() + 10
    while not (got := await ob.claim(30, 10)):
        assert asyncio.get_running_loop().time() < deadline, "the claim never ran out"
        await asyncio.sleep(0.005)
    [second] = got
    assert second.claim > first.claim
    for stale in (held, first):  # claims that are no longer current record nothing
        assert await ob.record(stale, True, 200, "", 0, 3_600_000) is None
    rec = await ob.record(second, False, 503, "HTTP 503", 5_000, 3_600_000)
    assert rec is not None and (rec.state, rec.attempts) == ("pending", 1)
    d = await ob.get("dlv_1")
    assert d is not None and d.next_ms == rec.next_ms
    assert [(a.status_code, a.error) for a in d.log] == [(503, "HTTP 503")]
    assert await ob.claim(60_000, 10) == []  # due again in 5 s, not now


async def test_delivered_leaves_the_outbox_and_failure_past_the_window_is_dead(
    redis_client: aioredis.Redis, store: LeaseStore
) -> None:
    ob = _outbox(store)
    await ob.add("dlv_ok", "run_a", FIELDS, 60_000)
    await ob.add("dlv_dead", "run_a", {**FIELDS, "seq": 4}, 60_000)
    claims = {c.delivery_id: c for c in await ob.claim(60_000, 10)}
    ok = await ob.record(claims["dlv_ok"], True, 204, "", 0, 3_600_000)
    assert ok is not None and ok.state == "delivered" and ok.next_ms is None
    # a retry 2 s out, with a 1 s window: no further attempt, dead now
    dead = await ob.record(claims["dlv_dead"], False, None, "timeout", 2_000, 1_000)
    assert dead is not None and dead.state == "dead"
    assert await ob.depth() == 0
    states = {d.id: (d.state, d.done_ms is not None) for d in await ob.run_deliveries("run_a")}
    assert states == {"dlv_ok": ("delivered", True), "dlv_dead": ("dead", True)}


async def test_a_record_gone_is_dropped_from_the_due_set(
    redis_client: aioredis.Redis, store: LeaseStore
) -> None:
    ob = _outbox(store)
    await ob.add("dlv_1", "run_a", FIELDS, 60_000)
    [c] = await ob.claim(60_000, 10)
    await redis_client.delete(Keys().callback_delivery("dlv_1"))  # expired
    assert await ob.record(c, True, 200, "", 0, 1_000) is None
    assert await ob.depth() == 0
