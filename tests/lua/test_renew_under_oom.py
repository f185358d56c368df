"""A full Redis (maxmemory, noeviction) still renews replica and session leases, on the
bundled Redis 6.2 (what CI runs) and on the machine's redis-server when it is another."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from streamward.lua.errors import is_write_refusal
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.tools.server import RedisServer, find_redis_server

TTL_MS = 60_000


def redis_binaries() -> list[str]:
    found = [find_redis_server("bundled")]
    with_path = find_redis_server()
    if os.path.realpath(with_path) != os.path.realpath(found[0]):
        found.append(with_path)
    return found


@pytest.fixture(scope="module", params=redis_binaries())
def full_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(binary=request.param, extra_args=["--maxmemory-policy", "noeviction"])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def client(full_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(full_server.url, decode_responses=True)
    await c.config_set("maxmemory", "0")
    await c.flushall()
    try:
        yield c
    finally:
        await c.config_set("maxmemory", "0")
        await c.flushall()
        await c.aclose()


async def fill_until_refused(client: aioredis.Redis) -> None:
    """Lower maxmemory under what is used, so every denyoom write is refused from now on."""
    for i in range(64):  # small values: a big one's query buffer is freed afterwards
        await client.set(f"filler:{i}", b"x" * 16 * 1024)
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", str(used - 512 * 1024))
    with pytest.raises(OutOfMemoryError) as refused:
        await client.set("one-more", b"x")
    assert is_write_refusal(refused.value)


async def test_replica_and_session_renewals_work_in_a_full_redis(
    client: aioredis.Redis, full_server: RedisServer
) -> None:
    keys = Keys()
    store = LeaseStore(client, keys)
    await store.register_replica("r1", "inc-1", TTL_MS, {"host": "h"})
    await store.renew_replica("r1", "inc-1", TTL_MS, {"leases": "1", "inflight": "0"})
    sk = keys.session("default", "s1")
    lease = await store.acquire(sk, "r1", "inc-1", TTL_MS)
    await store.scripts.load_all(client)
    rk = keys.replica("r1")
    await client.pexpire(rk.lease, 1_000)
    await client.pexpire(sk.lease, 1_000)
    await fill_until_refused(client)

    now, accepted = await store.renew_replica_checked("r1", "inc-1", TTL_MS, {"leases": "1"})
    assert not accepted  # renewed, and told that Redis refuses other writes
    assert await client.pttl(rk.lease) > 1_000  # the PEXPIRE went through
    assert int(await client.hget(rk.lease, "heartbeat_ms") or 0) == now
    res = await store.renew_many("r1", "inc-1", [(sk, lease.token)], TTL_MS)
    assert [s.ref for s in res.renewed] == [sk.ref] and res.lost == []
    assert await client.pttl(sk.lease) > 1_000

    await client.config_set("maxmemory", "0")
    assert (await store.renew_replica_checked("r1", "inc-1", TTL_MS))[1]
