"""streamward behind Sentinel: 1 master + 1 replica + 3 Sentinels, redis-py's Sentinel client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from lua.client import connect_from_config, redis_config_from_env
from lua.keys import Keys
from lua.probe import probe
from lua.store import LeaseStore
from lua.topology import LocalSentinel, log_tails
from tests.scale.conftest import sync_client, topology_fleet
from tests.scale.helpers import (
    Background,
    assert_fenced_and_complete,
    first_wave,
    fleet_logs,
    invoke,
    start_fleet,
    wait_runs,
)

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
        replica: Any = sync_client({"STREAMWARD_REDIS_URL": sent.live_data()[1].url})
        try:
            # Redis 7 does not replicate SCRIPT LOAD, 6.2 does: flush, so that the promoted
            # replica surely answers NOSCRIPT and the fallback is what gets tested
            replica.script_flush()
            assert replica.script_exists(store.scripts.acquireLease.sha) == [False]
        finally:
            replica.close()
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
    env = sent.env()
    client = sync_client(env)
    sessions = [f"s{i:02d}" for i in range(20)]
    fleet = topology_fleet(env)
    try:
        start_fleet(fleet, runners=2)
        first = first_wave(fleet, client, sessions, streamed=2)
        sent.wait_replication()
        during = Background(fleet.api_url, "during-").start()
        old = sent.kill_master()
        sent.wait_failover(old)
        after = {sid: invoke(fleet.api_url, sid, f"{sid}-2")["run_id"] for sid in sessions}
        in_flight = during.finish()
        wait_runs(client, after, 120)
        wait_runs(client, in_flight, 120)
        acknowledged = {sid: {first[sid], after[sid]} for sid in sessions}
        acknowledged.update({sid: {run} for sid, run in in_flight.items()})
        assert_fenced_and_complete(client, acknowledged, [*sessions, *in_flight])
        assert all(p.alive() for p in fleet.procs), fleet_logs(fleet)
    except BaseException:
        print(fleet_logs(fleet))
        print(log_tails(sent.data + sent.sentinels))
        raise
    finally:
        fleet.stop()
        client.close()
