"""acquireLease-4, takeoverLease-4, renewLeases-n, releaseLease-2, forceRelease-4, readLease-2
and claimLock-1 through the LeaseStore facade."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import LeaseHeld, NotOwner
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.replies import LeaseRecord, NoLease
from streamward.lua.store import LeaseStore
from tests.lua.helpers import LEASE_TTL_MS, REPLICA_TTL_MS, epoch

# -- acquireLease-4 ---------------------------------------------------------------------


async def test_acquire_free_lease_mints_token_from_epoch(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, keys: Keys
) -> None:
    await redis_client.set(session.epoch, 41)  # a session that had owners before
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert lease.token == 42 == await epoch(redis_client, session)
    assert lease.fresh
    assert (lease.replica_id, lease.incarnation, lease.session) == ("r1", "inc-1", session)
    fields = await redis_client.hgetall(session.lease)
    assert fields["replica"] == "r1" and fields["incarnation"] == "inc-1"
    assert int(fields["token"]) == 42
    assert int(fields["acquired_ms"]) == lease.acquired_ms == int(fields["renewed_ms"])
    assert 0 < await redis_client.pttl(session.lease) <= LEASE_TTL_MS
    meta = await redis_client.hgetall(session.meta)
    assert meta["transitions"] == "1"
    assert int(meta["owner_changed_ms"]) == lease.acquired_ms
    assert await redis_client.smembers(keys.replica("r1").leases) == {session.ref}


async def test_first_acquire_starts_at_token_one(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert lease.token == 1 == await epoch(redis_client, session)


async def test_acquire_is_idempotent_for_same_replica_and_incarnation(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    first = await store.acquire(session, "r1", "inc-1", 1_000)
    again = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert not again.fresh
    assert again.token == first.token
    assert again.acquired_ms == first.acquired_ms
    assert await epoch(redis_client, session) == first.token  # no new token minted
    assert await redis_client.pttl(session.lease) > 1_000  # extended to the new TTL
    meta = await redis_client.hgetall(session.meta)
    assert meta["transitions"] == "1"


async def test_acquire_held_by_other_replica_returns_holder(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, keys: Keys
) -> None:
    first = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    before = await redis_client.hgetall(session.lease)
    with pytest.raises(LeaseHeld) as exc:
        await store.acquire(session, "r2", "inc-9", LEASE_TTL_MS)
    held = exc.value
    assert (held.replica_id, held.incarnation, held.token) == ("r1", "inc-1", first.token)
    assert 0 < held.pttl_ms <= LEASE_TTL_MS
    assert await redis_client.hgetall(session.lease) == before
    assert await epoch(redis_client, session) == first.token
    assert await redis_client.smembers(keys.replica("r2").leases) == set()


async def test_acquire_by_new_incarnation_of_same_replica_is_held(
    store: LeaseStore, session: SessionKeys
) -> None:
    first = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    with pytest.raises(LeaseHeld) as exc:
        await store.acquire(session, "r1", "inc-2", LEASE_TTL_MS)
    assert (exc.value.incarnation, exc.value.token) == ("inc-1", first.token)


async def test_acquire_after_expiry_mints_next_token(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    first = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await redis_client.delete(session.lease)  # the hard TTL ran out
    second = await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
    assert second.fresh and second.token == first.token + 1


# -- takeoverLease-4 --------------------------------------------------------------------


async def test_takeover_cas_on_expected_holder_mints_new_token(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, keys: Keys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "inc-7", LEASE_TTL_MS)
    assert new.fresh and new.token == old.token + 1 == await epoch(redis_client, session)
    fields = await redis_client.hgetall(session.lease)
    assert (fields["replica"], fields["incarnation"], fields["token"]) == (
        "r2",
        "inc-7",
        str(new.token),
    )
    meta = await redis_client.hgetall(session.meta)
    assert meta["takeovers"] == "1" and meta["transitions"] == "2"
    assert await redis_client.smembers(keys.replica("r2").leases) == {session.ref}
    assert await redis_client.smembers(keys.replica("r1").leases) == set()


async def test_takeover_succeeds_when_lease_is_gone(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await redis_client.delete(session.lease)
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "i", LEASE_TTL_MS)
    assert new.fresh and new.token == old.token + 1


@pytest.mark.parametrize(
    "expected",
    [("r9", "inc-1", 1), ("r1", "inc-0", 1), ("r1", "inc-1", 0), ("r1", "inc-1", 2)],
    ids=["other-replica", "other-incarnation", "older-token", "newer-token"],
)
async def test_takeover_refused_when_holder_differs_from_expected(
    store: LeaseStore,
    redis_client: aioredis.Redis,
    session: SessionKeys,
    expected: tuple[str, str, int],
) -> None:
    held = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert held.token == 1
    before = await redis_client.hgetall(session.lease)
    with pytest.raises(LeaseHeld) as exc:
        await store.takeover(session, expected, "r2", "inc-2", LEASE_TTL_MS)
    assert (exc.value.replica_id, exc.value.incarnation, exc.value.token) == ("r1", "inc-1", 1)
    assert await redis_client.hgetall(session.lease) == before
    assert await epoch(redis_client, session) == 1
    assert "takeovers" not in await redis_client.hgetall(session.meta)


async def test_takeover_by_current_holder_is_idempotent(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "i", LEASE_TTL_MS)
    again = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "i", LEASE_TTL_MS)
    assert not again.fresh and again.token == new.token
    assert await epoch(redis_client, session) == new.token


# -- renewLeases-n -----------------------------------------------------------------------


async def test_renew_many_reports_one_result_per_key(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    held = [keys.session("p", f"held-{i}") for i in range(3)]
    expired = keys.session("p", "expired")
    not_owner = keys.session("p", "not-owner")
    stale = keys.session("p", "stale")
    tokens: dict[str, int] = {}
    for s in [*held, expired, not_owner, stale]:
        tokens[s.ref] = (await store.acquire(s, "r1", "inc-1", 30_000)).token
    await redis_client.pexpire(held[0].lease, 1_000)  # renewal must restore the full TTL
    await redis_client.delete(expired.lease)
    await store.force_release(not_owner)
    await store.acquire(not_owner, "r2", "inc-1", LEASE_TTL_MS)
    # same replica and incarnation, but the lease was re-minted: our token is stale
    await store.force_release(stale)
    await store.acquire(stale, "r1", "inc-1", LEASE_TTL_MS)
    before_not_owner = await redis_client.hgetall(not_owner.lease)

    order = [held[0], expired, held[1], not_owner, stale, held[2]]
    result = await store.renew_many("r1", "inc-1", [(s, tokens[s.ref]) for s in order], 30_000)

    assert result.renewed == [held[0], held[1], held[2]]
    assert result.lost == [(expired, "expired"), (not_owner, "not_owner"), (stale, "stale_token")]
    sec, usec = await redis_client.time()
    assert abs(result.now_ms - (sec * 1000 + usec // 1000)) < 5_000
    for s in held:
        assert 1_000 < await redis_client.pttl(s.lease) <= 30_000
        assert int(await redis_client.hget(s.lease, "ttl_ms") or 0) == 30_000
        # renewals only PEXPIRE; readLease derives renewed_ms from the remaining TTL
        own = await store.ownership(s)
        assert own.renewed_ms is not None and abs(own.renewed_ms - result.now_ms) <= 50
    assert await redis_client.exists(expired.lease) == 0  # never recreated
    assert await redis_client.hgetall(not_owner.lease) == before_not_owner
    # lost sessions leave the replica's index
    assert await redis_client.smembers(keys.replica("r1").leases) == {s.ref for s in held}


async def test_renew_many_chunks_and_pipelines_many_keys(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    sessions = [keys.session("p", f"s{i}") for i in range(250)]
    # acquired one by one: a TTL a loaded machine cannot outrun before the renewal
    leases = [(s, (await store.acquire(s, "r1", "inc-1", 20_000)).token) for s in sessions]
    await redis_client.delete(sessions[7].lease, sessions[199].lease)
    await redis_client.config_resetstat()
    result = await store.renew_many("r1", "inc-1", leases, LEASE_TTL_MS, chunk=100)
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3  # 250 keys in chunks of 100
    assert len(result.renewed) == 248
    assert [s for s, _ in result.lost] == [sessions[7], sessions[199]]
    assert all(r == "expired" for _, r in result.lost)


async def test_renew_many_over_several_pipelines_keeps_every_result_in_order(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    # chunks of 5 over 300 leases: 60 chunks, more than one pipeline's worth, several in flight
    sessions = [keys.session("p", f"m{i}") for i in range(300)]
    leases = [(s, (await store.acquire(s, "r1", "inc-1", 20_000)).token) for s in sessions]
    gone = [sessions[3], sessions[142], sessions[299]]
    await redis_client.delete(*[s.lease for s in gone])
    await store.renew_many("r1", "inc-1", leases[:1], LEASE_TTL_MS)  # script loaded: no NOSCRIPT
    await redis_client.config_resetstat()
    result = await store.renew_many("r1", "inc-1", leases, LEASE_TTL_MS, chunk=5)
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 60
    assert result.renewed == [s for s in sessions if s not in gone]
    assert [s for s, _ in result.lost] == gone
    # extended past the acquisition's 20 s to LEASE_TTL_MS (60 s)
    assert [await redis_client.pttl(s.lease) > 20_000 for s in result.renewed[::37]] == [True] * 9


async def test_renew_many_with_nothing_makes_no_call(
    store: LeaseStore, redis_client: aioredis.Redis
) -> None:
    await redis_client.config_resetstat()
    result = await store.renew_many("r1", "inc-1", [], LEASE_TTL_MS)
    assert (result.renewed, result.lost, result.now_ms) == ([], [], 0)
    stats = await redis_client.info("commandstats")
    assert "cmdstat_evalsha" not in stats and "cmdstat_eval" not in stats


async def test_renew_many_never_extends_another_incarnations_lease(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", 1_000)
    result = await store.renew_many("r1", "inc-2", [(session, lease.token)], LEASE_TTL_MS)
    assert result.renewed == [] and result.lost == [(session, "not_owner")]
    assert await redis_client.pttl(session.lease) <= 1_000


# -- releaseLease-2 ----------------------------------------------------------------------


async def test_release_by_owner_deletes_lease_but_keeps_epoch(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, keys: Keys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert await store.release(session, "r1", "inc-1", lease.token) is True
    assert await redis_client.exists(session.lease) == 0
    assert await epoch(redis_client, session) == lease.token
    assert await redis_client.smembers(keys.replica("r1").leases) == set()
    # already released: False, not an error
    assert await store.release(session, "r1", "inc-1", lease.token) is False
    nxt = await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
    assert nxt.token == lease.token + 1


@pytest.mark.parametrize(
    "caller",
    [("r2", "inc-1", 1), ("r1", "inc-2", 1), ("r1", "inc-1", 2)],
    ids=["other-replica", "other-incarnation", "other-token"],
)
async def test_release_is_owner_checked(
    store: LeaseStore,
    redis_client: aioredis.Redis,
    session: SessionKeys,
    caller: tuple[str, str, int],
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert lease.token == 1
    with pytest.raises(NotOwner):
        await store.release(session, *caller)
    assert await redis_client.hget(session.lease, "replica") == "r1"


# -- forceRelease-4 ----------------------------------------------------------------------


async def test_force_release_deletes_and_bumps_epoch(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, keys: Keys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    out = await store.force_release(session, "sre: stuck run")
    assert (out.old_replica_id, out.old_incarnation, out.old_token) == ("r1", "inc-1", lease.token)
    assert out.new_epoch == lease.token + 1 == await epoch(redis_client, session)
    assert await redis_client.exists(session.lease) == 0
    meta = await redis_client.hgetall(session.meta)
    assert meta["last_release_reason"] == "sre: stuck run"
    assert meta["transitions"] == "2"
    assert await redis_client.smembers(keys.replica("r1").leases) == set()
    # the next owner's token is above the forced epoch
    nxt = await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
    assert nxt.token == out.new_epoch + 1


async def test_force_release_without_lease_still_bumps_epoch(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    out = await store.force_release(session)
    assert (out.old_replica_id, out.old_incarnation, out.old_token) == ("", "", 0)
    assert out.new_epoch == 1 == await epoch(redis_client, session)
    assert (await redis_client.hgetall(session.meta))["last_release_reason"] == "manual"


# -- readLease-2 / ownership -------------------------------------------------------------


async def test_ownership_of_free_session(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    own = await store.ownership(session)
    assert (own.project, own.session_id, own.held, own.epoch) == ("proj", "sess-1", False, 0)
    assert own.replica_id is None and not own.alive and own.expires_in_ms is None
    await redis_client.set(session.epoch, 5)
    assert (await store.ownership(session)).epoch == 5


async def test_ownership_with_live_replica(store: LeaseStore, session: SessionKeys) -> None:
    await store.register_replica("r1", "inc-1", REPLICA_TTL_MS)
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    own = await store.ownership(session)
    assert own.held and own.replica_alive and own.alive
    assert (own.replica_id, own.incarnation, own.token, own.epoch) == (
        "r1",
        "inc-1",
        lease.token,
        lease.token,
    )
    assert own.acquired_ms == lease.acquired_ms
    # derived (now - (ttl - PTTL)), both in whole ms: a millisecond tick between them rounds
    assert own.renewed_ms is not None and own.acquired_ms is not None
    assert 0 <= own.renewed_ms - own.acquired_ms <= 1
    assert own.lease_ttl_ms is not None and REPLICA_TTL_MS < own.lease_ttl_ms <= LEASE_TTL_MS
    assert own.replica_ttl_ms is not None and 0 < own.replica_ttl_ms <= REPLICA_TTL_MS
    # valid until the earlier of the two leases runs out: the replica lease here
    assert own.expires_in_ms == own.replica_ttl_ms


async def test_ownership_when_holder_replica_is_dead_or_reincarnated(
    store: LeaseStore, session: SessionKeys
) -> None:
    await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    dead = await store.ownership(session)
    assert dead.held and not dead.replica_alive and not dead.alive
    assert dead.expires_in_ms == 0 and dead.replica_ttl_ms is None
    await store.register_replica("r1", "inc-2", REPLICA_TTL_MS)  # restarted: other incarnation
    other = await store.ownership(session)
    assert other.held and not other.replica_alive and other.expires_in_ms == 0
    await store.register_replica("r1", "inc-1", REPLICA_TTL_MS)
    assert (await store.ownership(session)).alive


async def test_ownership_expiry_follows_the_shorter_session_lease(
    store: LeaseStore, session: SessionKeys
) -> None:
    await store.register_replica("r1", "inc-1", 60_000)
    await store.acquire(session, "r1", "inc-1", 2_000)
    own = await store.ownership(session)
    assert own.lease_ttl_ms is not None and own.expires_in_ms == own.lease_ttl_ms <= 2_000


async def test_read_lease_reply(store: LeaseStore, session: SessionKeys) -> None:
    raw = store.scripts.script("readLease")
    assert await raw([session.lease, session.epoch], []) == [-7, 0]  # the wire shape
    assert await store.scripts.read_lease(session) == NoLease(epoch=0)
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    rec = await store.scripts.read_lease(session)
    assert isinstance(rec, LeaseRecord)
    assert (rec.replica_id, rec.incarnation, rec.token) == ("r1", "inc-1", lease.token)
    assert rec.acquired_ms == lease.acquired_ms
    assert 0 <= rec.renewed_ms - rec.acquired_ms <= 1  # derived, whole ms (see above)
    assert 0 < rec.pttl_ms <= LEASE_TTL_MS and rec.epoch == lease.token


# -- claimLock-1 -------------------------------------------------------------------------


async def test_claim_lock_take_extend_refuse_and_free(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    assert await store.claim_lock(keys.watchdog, "r1:inc-1", 1_000)
    assert await redis_client.get(keys.watchdog) == "r1:inc-1"
    assert await store.claim_lock(keys.watchdog, "r1:inc-1", 30_000)  # extend
    assert 1_000 < await redis_client.pttl(keys.watchdog) <= 30_000
    assert not await store.claim_lock(keys.watchdog, "r2:inc-1", 30_000)
    assert not await store.claim_lock(keys.watchdog, "r1:inc-2", 30_000)
    assert await redis_client.get(keys.watchdog) == "r1:inc-1"
    claim = await store.scripts.claim_lock(keys.watchdog, "r2:inc-1", 30_000)
    assert not claim.held and claim.owner == "r1:inc-1" and 0 < claim.pttl_ms <= 30_000
    await redis_client.delete(keys.watchdog)  # expired
    assert await store.claim_lock(keys.watchdog, "r2:inc-1", 30_000)
    assert await redis_client.get(keys.watchdog) == "r2:inc-1"
