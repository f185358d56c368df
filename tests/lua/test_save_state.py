"""saveState-3: a session host's snapshot, fenced like ingest (token == epoch >= 1 and the
lease naming the writer), one round trip."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import NotOwner, StaleToken
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.lua.helpers import LEASE_TTL_MS


async def test_owner_saves_and_the_snapshot_reads_back(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    saved_ms = await store.save_state(session, ("r1", "inc-1", lease.token), '{"turns": [1]}')
    saved = await Streams(redis_client).read_state(session)
    assert saved is not None
    assert saved.value() == {"turns": [1]}
    assert (saved.token, saved.replica_id, saved.saved_ms) == (lease.token, "r1", saved_ms)
    # a later save replaces it whole
    await store.save_state(session, ("r1", "inc-1", lease.token), "[]")
    again = await Streams(redis_client).read_state(session)
    assert again is not None and again.value() == []


async def test_no_state_reads_none(redis_client: aioredis.Redis, session: SessionKeys) -> None:
    assert await Streams(redis_client).read_state(session) is None


async def test_a_never_acquired_session_accepts_nobody(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    with pytest.raises(StaleToken):
        await store.save_state(session, ("r1", "inc-1", 0), "{}")
    with pytest.raises(StaleToken):
        await store.save_state(session, ("r1", "inc-1", 1), "{}")
    assert not await redis_client.exists(session.state)


async def test_a_stale_owner_is_refused_after_a_takeover(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.save_state(session, ("r1", "inc-1", old.token), '{"by": "old"}')
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "inc-9", LEASE_TTL_MS)
    with pytest.raises(StaleToken):
        await store.save_state(session, ("r1", "inc-1", old.token), '{"by": "stale"}')
    await store.save_state(session, ("r2", "inc-9", new.token), '{"by": "new"}')
    saved = await Streams(redis_client).read_state(session)
    assert saved is not None and saved.value() == {"by": "new"} and saved.token == new.token


async def test_the_lease_must_name_the_writer(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """Same token number, another holder (a failover lost an acquisition): refused."""
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    with pytest.raises(NotOwner):
        await store.save_state(session, ("r1", "inc-OTHER", lease.token), "{}")
    with pytest.raises(NotOwner):
        await store.save_state(session, ("r2", "inc-1", lease.token), "{}")
    assert not await redis_client.exists(session.state)


async def test_force_release_fences_the_holder(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.force_release(session, "deleted")
    with pytest.raises(StaleToken):
        await store.save_state(session, ("r1", "inc-1", lease.token), "{}")


async def test_retiring_a_session_expires_its_state(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.save_state(session, ("r1", "inc-1", lease.token), "{}")
    streams = Streams(redis_client)
    await streams.retire_session(session, "deleted", "manual", 60_000)
    assert 0 < await redis_client.pttl(session.state) <= 60_000
    await streams.revive_session(session)
    assert await redis_client.pttl(session.state) == -1
