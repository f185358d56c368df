"""PendingSweep against a real redis-server: what it prunes, re-scores, wakes and re-queues."""

from __future__ import annotations

from typing import Any

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.pending_sweep import PendingSweep


async def _work(client: Any, keys: Keys) -> list[tuple[str, str]]:
    return [(f["session"], f["reason"]) for _, f in await client.xrange(keys.work)]


async def test_sweep_prunes_wakes_and_requeues_by_what_it_finds(
    redis_client: Any, store: LeaseStore, keys: Keys
) -> None:
    streams = Streams(redis_client, keys)
    ref = {n: keys.session("p", n) for n in ("empty", "free", "live", "dead", "held")}
    for n in ("free", "live", "dead", "held"):
        await store.enqueue(ref[n], f"run_{n}", "{}")
    await store.register_replica("alive", "i1", 60_000)
    await store.acquire(ref["live"], "alive", "i1", 60_000)
    await store.acquire(ref["dead"], "gone", "i9", 60_000)  # its replica lease never existed
    held_last = (await redis_client.xrevrange(ref["held"].inbox, count=1))[0][0]
    await redis_client.hset(ref["held"].meta, "hold_until_id", held_last)  # queue policy
    # every entry is old enough for the sweep (scores far in the past)
    await redis_client.zadd(keys.pending, {sk.ref: 1 for sk in ref.values()})
    await redis_client.delete(keys.work)

    result = await PendingSweep(keys, store, streams, grace_ms=1000).sweep()

    assert (result.visited, result.pruned, result.requeued, result.woken) == (5, 2, 2, 1)
    assert sorted(await _work(redis_client, keys)) == [
        (ref["dead"].ref, "sweep"),
        (ref["free"].ref, "sweep"),
    ]
    mail = await redis_client.xrange(keys.replica("alive").mail)
    assert [(f["kind"], f["session"]) for _, f in mail] == [("wake", ref["live"].ref)]
    left = dict(await redis_client.zrange(keys.pending, 0, -1, withscores=True))
    assert set(left) == {ref["free"].ref, ref["live"].ref, ref["dead"].ref}
    assert all(score > 1 for score in left.values())  # re-scored: visited again after grace

    # nothing is due now: a second sweep right away visits nobody
    again = await PendingSweep(keys, store, streams, grace_ms=1000).sweep()
    assert again.visited == 0


async def test_sweep_leaves_young_entries_alone(
    redis_client: Any, store: LeaseStore, keys: Keys
) -> None:
    streams = Streams(redis_client, keys)
    sk = keys.session("p", "fresh")
    await store.enqueue(sk, "run_x", "{}")  # scored now: inside the grace
    result = await PendingSweep(keys, store, streams, grace_ms=60_000).sweep()
    assert result.visited == 0
    assert await redis_client.xlen(keys.work) == 0
