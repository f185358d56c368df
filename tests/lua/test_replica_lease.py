"""registerReplica-1 / renewReplica-1: the replica lease and its loss."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from streamward.lua.client import connect_sync
from streamward.lua.config import RedisConfig
from streamward.lua.errors import ReplicaLost
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.syncrenew import SyncReplicaRenewal
from streamward.tools.server import RedisServer
from tests.lua.helpers import REPLICA_TTL_MS


async def test_register_creates_lease_with_ttl_fields_and_heartbeat_index(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    reg = await store.register_replica("r1", "inc-1", REPLICA_TTL_MS, {"host": "h1", "pod": "p1"})
    assert reg.previous_incarnation == ""
    rk = keys.replica("r1")
    fields = await redis_client.hgetall(rk.lease)
    assert fields["incarnation"] == "inc-1"
    assert fields["host"] == "h1" and fields["pod"] == "p1"
    assert fields["draining"] == "0"
    assert int(fields["started_ms"]) == reg.now_ms == int(fields["heartbeat_ms"])
    assert 0 < await redis_client.pttl(rk.lease) <= REPLICA_TTL_MS
    assert await redis_client.zscore(keys.replicas, "r1") == reg.now_ms
    # the script's clock is Redis TIME
    sec, usec = await redis_client.time()
    assert abs(reg.now_ms - (sec * 1000 + usec // 1000)) < 5_000
    assert await store.replica_alive("r1")
    assert await store.replica_alive("r1", "inc-1")
    assert not await store.replica_alive("r1", "inc-0")
    assert not await store.replica_alive("r2")


async def test_register_replaces_older_incarnation_and_drops_its_fields(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    await store.register_replica("r1", "inc-1", REPLICA_TTL_MS, {"stale_field": "x"})
    reg = await store.register_replica("r1", "inc-2", REPLICA_TTL_MS)
    assert reg.previous_incarnation == "inc-1"
    fields = await redis_client.hgetall(keys.replica("r1").lease)
    assert fields["incarnation"] == "inc-2"
    assert "stale_field" not in fields
    # the old incarnation has lost its lease and is told who holds it now
    with pytest.raises(ReplicaLost) as exc:
        await store.renew_replica("r1", "inc-1", REPLICA_TTL_MS)
    assert exc.value.replica_id == "r1"
    assert exc.value.current_incarnation == "inc-2"
    assert await store.replica_alive("r1", "inc-2")


async def test_renew_refreshes_ttl_heartbeat_and_status_fields(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    reg = await store.register_replica("r1", "inc-1", 1_000)
    now = await store.renew_replica("r1", "inc-1", REPLICA_TTL_MS, {"leases": "7", "draining": "1"})
    assert now >= reg.now_ms
    rk = keys.replica("r1")
    fields = await redis_client.hgetall(rk.lease)
    assert int(fields["heartbeat_ms"]) == now
    assert fields["leases"] == "7" and fields["draining"] == "1"
    assert int(fields["started_ms"]) == reg.now_ms  # renew never resets the start
    assert 1_000 < await redis_client.pttl(rk.lease) <= REPLICA_TTL_MS
    assert await redis_client.zscore(keys.replicas, "r1") == now


async def test_renew_of_missing_lease_is_lost_and_never_recreates_it(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    rk = keys.replica("r1")
    with pytest.raises(ReplicaLost) as exc:
        await store.renew_replica("r1", "inc-1", REPLICA_TTL_MS, {"leases": "3"})
    assert exc.value.current_incarnation == ""
    assert await redis_client.exists(rk.lease) == 0
    assert await redis_client.zscore(keys.replicas, "r1") is None

    # a lease that expired (TTL ran out) is lost the same way and stays gone
    await store.register_replica("r1", "inc-1", 1)
    for _ in range(400):
        if not await redis_client.exists(rk.lease):
            break
        await asyncio.sleep(0.005)
    with pytest.raises(ReplicaLost):
        await store.renew_replica("r1", "inc-1", REPLICA_TTL_MS)
    assert await redis_client.exists(rk.lease) == 0
    assert not await store.replica_alive("r1")


async def test_renew_with_another_incarnation_is_lost_and_leaves_lease_untouched(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    await store.register_replica("r1", "inc-2", REPLICA_TTL_MS, {"host": "a"})
    rk = keys.replica("r1")
    before = await redis_client.hgetall(rk.lease)
    with pytest.raises(ReplicaLost) as exc:
        await store.renew_replica("r1", "inc-1", 60_000, {"host": "b"})
    assert exc.value.current_incarnation == "inc-2"
    assert await redis_client.hgetall(rk.lease) == before
    assert await redis_client.pttl(rk.lease) <= REPLICA_TTL_MS


async def test_re_register_after_loss_uses_new_incarnation(store: LeaseStore) -> None:
    await store.register_replica("r1", "inc-1", REPLICA_TTL_MS)
    await store.client.delete(store.keys.replica("r1").lease)  # the lease expired
    with pytest.raises(ReplicaLost):
        await store.renew_replica("r1", "inc-1", REPLICA_TTL_MS)
    reg = await store.register_replica("r1", "inc-2", REPLICA_TTL_MS)
    assert reg.previous_incarnation == ""
    assert await store.renew_replica("r1", "inc-2", REPLICA_TTL_MS) >= reg.now_ms


async def test_sync_renewal_renews_like_the_async_one_and_reports_a_lost_lease(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, redis_server: RedisServer
) -> None:
    """The heartbeat thread's renewal: same script, same index score, its own sync client."""
    await store.register_replica("r1", "inc-1", REPLICA_TTL_MS, {})
    renewal = SyncReplicaRenewal(connect_sync(RedisConfig(url=redis_server.url)), keys)
    try:
        now, accepted = await asyncio.to_thread(
            renewal.renew, "r1", "inc-1", REPLICA_TTL_MS, {"leases": "7"}
        )
        assert accepted
        rk = keys.replica("r1")
        assert await redis_client.hget(rk.lease, "leases") == "7"
        assert int(await redis_client.hget(rk.lease, "heartbeat_ms") or 0) == now
        assert await redis_client.zscore(keys.replicas, "r1") == now
        with pytest.raises(ReplicaLost) as lost:
            await asyncio.to_thread(renewal.renew, "r1", "inc-0", REPLICA_TTL_MS, None)
        assert lost.value.current_incarnation == "inc-1"
    finally:
        renewal.close()
