"""The pending index (enqueue writes it first, prunePending-1 removes score-checked) and the
ownership history the lease scripts append (acquire, takeover, release, force release)."""

from __future__ import annotations

from typing import Any

from streamward.lua.errors import SessionBusy
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.store import LeaseStore
from tests.lua.helpers import LEASE_TTL_MS


async def test_enqueue_indexes_the_session_even_when_the_append_is_refused(
    store: LeaseStore, redis_client: Any, session: SessionKeys, keys: Keys
) -> None:
    await store.enqueue(session, "run_a", "{}")
    score = await redis_client.zscore(keys.pending, session.ref)
    assert score is not None and score > 0
    other = keys.session("proj", "busy")
    await store.enqueue(other, "run_b", "{}")
    await redis_client.zrem(keys.pending, other.ref)
    try:
        await store.enqueue(other, "run_c", "{}", multitask="reject")
        raise AssertionError("reject with a pending input must be refused")
    except SessionBusy:
        pass
    # the ZADD went first: a spurious entry, which the sweep prunes (harmless)
    assert await redis_client.zscore(keys.pending, other.ref) is not None


async def test_prune_removes_only_entries_whose_score_did_not_move(
    store: LeaseStore, redis_client: Any, keys: Keys
) -> None:
    await redis_client.zadd(keys.pending, {"p/a": 100, "p/b": 100, "p/c": 100})
    # a concurrent enqueue re-scored b after the sweep read it at 100
    await redis_client.zadd(keys.pending, {"p/b": 250})
    removed = await store.scripts.prune_pending(
        keys.pending, [("p/a", 100), ("p/b", 100), ("p/missing", 100)]
    )
    assert removed == 1
    assert await redis_client.zrange(keys.pending, 0, -1) == ["p/c", "p/b"]
    assert await store.scripts.prune_pending(keys.pending, []) == 0


async def _history(client: Any, sk: SessionKeys) -> list[dict[str, str]]:
    return [f for _, f in await client.xrange(sk.history)]


async def test_every_ownership_change_is_in_the_history(
    store: LeaseStore, redis_client: Any, session: SessionKeys
) -> None:
    await store.register_replica("r1", "i1", 5_000)
    a = await store.acquire(session, "r1", "i1", LEASE_TTL_MS)
    await store.acquire(session, "r1", "i1", LEASE_TTL_MS)  # idempotent: no new entry
    t = await store.takeover(session, ("r1", "i1", a.token), "r2", "i2", LEASE_TTL_MS)
    await store.release(session, "r2", "i2", t.token, "passivate")
    b = await store.acquire(session, "r3", "i3", LEASE_TTL_MS)
    out = await store.force_release(session, "stuck handler")
    assert (out.old_replica_id, out.old_token) == ("r3", b.token)
    h = await _history(redis_client, session)
    assert [e["event"] for e in h] == [
        "acquired",
        "taken_over",
        "released",
        "acquired",
        "force_released",
    ]
    assert h[1]["reason"] == f"from r1|i1|{a.token}" and h[1]["replica"] == "r2"
    assert h[2]["reason"] == "passivate" and h[2]["token"] == str(t.token)
    assert h[4] | {"ms": ""} == {
        "event": "force_released",
        "replica": "r3",
        "incarnation": "i3",
        "token": str(b.token),
        "reason": "stuck handler",
        "ms": "",
    }
    meta = await redis_client.hgetall(session.meta)
    assert meta["last_release_reason"] == "stuck handler"
    assert meta["release_kind"] == "force"
    assert meta["force_released_token"] == str(b.token)


async def test_force_release_of_a_free_session_records_no_token(
    store: LeaseStore, redis_client: Any, session: SessionKeys
) -> None:
    await store.force_release(session, "cleanup", "deleted")
    meta = await redis_client.hgetall(session.meta)
    assert meta["release_kind"] == "deleted" and "force_released_token" not in meta
    h = await _history(redis_client, session)
    assert h[0]["event"] == "force_released" and h[0]["replica"] == ""


async def test_history_is_capped(
    store: LeaseStore, redis_client: Any, session: SessionKeys
) -> None:
    for i in range(300):
        lease = await store.acquire(session, "r1", f"i{i}", LEASE_TTL_MS)
        await store.release(session, "r1", f"i{i}", lease.token, "passivate")
    n = await redis_client.xlen(session.history)
    assert 200 <= n < 400  # MAXLEN ~200: trimmed by whole nodes, never unbounded
