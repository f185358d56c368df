"""streamward behind Sentinel: 1 master + 1 replica + 3 Sentinels, redis-py's Sentinel client."""

from __future__ import annotations

import asyncio

import pytest
import redis

from streamward.lua.client import connect_from_config
from streamward.lua.config import redis_config_from_env
from streamward.lua.keys import Keys
from streamward.lua.probe import probe
from streamward.lua.store import LeaseStore
from streamward.tools.topology import LocalSentinel
from tests.scale.helpers import Background, first_wave, running_fleet, second_wave, sync_client

pytestmark = pytest.mark.topology


async def test_client_follows_the_master_through_a_failover(own_sentinel: LocalSentinel) -> None:
    """The probe finds the master through the Sentinels; after SIGKILL of the master the same
    client object reaches the promoted replica, whose script cache is empty (NOSCRIPT → load)."""
    sent = own_sentinel
    cfg = redis_config_from_env(sent.env())
    client = connect_from_config(cfg, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        found = await probe(client, cfg)
        assert found.ok and found.scripting
        assert (found.server_mode, found.role, found.replicas) == ("standalone", "master", 1)
        assert found.target == f"sentinel master 'mymaster' via {sent.sentinel_addrs}"
        store = LeaseStore(client, Keys())
        s = store.keys.session("p", "s1")
        await store.register_replica("r1", "i1", 60_000)
        lease = await store.acquire(s, "r1", "i1", 60_000)
        sent.wait_replication()
        old = sent.master()
        with sync_client({"STREAMWARD_REDIS_URL": sent.live_data()[1].url}) as replica:
            # Redis 7 does not replicate SCRIPT LOAD, 6.2 does: flush, so that the promoted
            # replica surely answers NOSCRIPT and the fallback is what gets tested
            replica.script_flush()
            assert replica.script_exists(store.scripts.script("acquireLease").sha) == [False]
        sent.kill_master()
        new = sent.wait_failover(old)
        # the first call may meet a connection to the dead master: ride it out like the
        # runner's loops do (the pool then asks the Sentinels for the new master)
        for _ in range(50):
            try:
                ownership = await store.ownership(s)
                break
            except (redis.ConnectionError, redis.TimeoutError):
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the client never reached the new master")
        assert ownership.held and ownership.token == lease.token  # replicated before the kill
        assert (await store.acquire(s, "r1", "i1", 60_000)).token == lease.token
        found = await probe(client, cfg)
        assert found.ok and found.role == "master" and found.replicas == 0
        assert await client.info("server") and new.port == sent.master_port()
    finally:
        await client.aclose()


def test_fleet_behind_sentinel_survives_a_failover(own_sentinel: LocalSentinel) -> None:
    """API + 2 runners through Sentinel: runs complete; SIGKILL the master; once the Sentinels
    promote the replica, new and in-flight invocations complete, nothing acknowledged is lost
    and no log has a stale write."""
    sent = own_sentinel
    sessions = [f"s{i:02d}" for i in range(20)]
    with running_fleet(sent.env(), 2, sent.data + sent.sentinels) as (fleet, client):
        first = first_wave(fleet, client, sessions, streamed=2)
        sent.wait_replication()
        during = Background(fleet.api_url, "during-").start()
        old = sent.kill_master()
        sent.wait_failover(old)
        second_wave(fleet, client, sessions, first, during)
