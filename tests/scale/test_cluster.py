"""streamward on a real 3-master / 3-replica Redis Cluster (redis-cli --cluster create)."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from streamward.lua.client import connect_from_config
from streamward.lua.config import RedisConfig, redis_config_from_env
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.probe import ProbeError, probe, probe_config
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.topology import LocalCluster
from tests.lua.test_static import _drive_facade
from tests.scale.helpers import (
    KEYS,
    Background,
    first_wave,
    running_fleet,
    second_wave,
    sync_client,
)

pytestmark = pytest.mark.topology


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[LeaseStore]:
    """A LeaseStore on its own Cluster client, under a key prefix of its own."""
    client = connect_from_config(redis_config_from_env(cluster.env()), socket_timeout=5.0)
    try:
        yield LeaseStore(client, Keys(f"t{secrets.token_hex(3)}"))
    finally:
        await client.aclose()


async def _hold(store: LeaseStore, n: int) -> list[tuple[SessionKeys, int]]:
    """``n`` sessions whose leases replica r1 holds, with their tokens."""
    await store.register_replica("r1", "i1", 10_000)
    sessions = [store.keys.session("p", f"s{i}") for i in range(n)]
    return [(s, (await store.acquire(s, "r1", "i1", 60_000)).token) for s in sessions]


async def test_probe_sees_three_masters_with_replicas(cluster: LocalCluster) -> None:
    found = await probe_config(redis_config_from_env(cluster.env()))
    assert found.ok and found.scripting
    assert (found.server_mode, found.masters, found.replicas) == ("cluster", 3, 3)
    assert found.line().startswith(f"redis {found.version} cluster (3 masters, 3 replicas) via ")


async def test_a_standalone_client_on_a_cluster_node_is_refused(cluster: LocalCluster) -> None:
    node = cluster.masters()[0]
    with pytest.raises(ProbeError, match="set STREAMWARD_REDIS_MODE=cluster"):
        await probe_config(RedisConfig(url=node.url))


async def test_every_facade_call_stays_in_one_slot(
    cluster: LocalCluster, store: LeaseStore
) -> None:
    """A real cluster refuses any call whose keys span two slots (CROSSSLOT): drive every
    LeaseStore script and every Streams call through it."""
    client, keys = store.client, store.keys
    assert store.cluster
    await _drive_facade(store, cluster_grouping=True)
    st = Streams(client, keys)
    s = keys.session("proj", "sess")
    await st.ensure_work_group()
    await st.publish_work(s.ref, "test")
    await st.publish_work_many([s.ref, "proj/other"], "test")
    work = await st.read_work("c1", 10, 100)
    assert [w.session_ref for w in work] == [s.ref, s.ref, "proj/other"]
    assert await st.autoclaim_work("c2", 0, 10)
    await st.ack_work(*[w.id for w in work])
    assert await st.work_backlog() == 0
    mid = await st.send_mail("r1", "wake", s.ref)
    # after the facade's own notify_replica mails
    assert [(m.id, m.kind) for m in await st.read_mail("r1", "0-0", 100)][-1] == (mid, "wake")
    await st.touch_session(s)
    assert (await st.scan_sessions())[1][0][0] == s.ref
    # the listing: the project's indexes and snapshot in the project's slot, meta reads
    # of sessions spread over the cluster in one pipeline
    for i in range(5):
        await st.touch_session(keys.session("proj", f"l{i}"), 1_000 + i, created_ms=1_000 + i)
    snap = await st.snapshot_activity("proj", "1" * 32, None, True, 2, 60_000)
    assert snap.snapshot_id is not None and len(snap.head) == 2
    assert len(await st.read_snapshot("proj", "1" * 32, 2, 10, True, 60_000) or []) == 4
    got, ended = await st.read_created("proj", (1_002, "l2"), None, True, 10)
    assert [sid for sid, _ in got] == ["l1", "l0"] and ended
    assert len(await st.listing_meta("proj", ["sess", "l0", "l1"])) == 3
    assert await st.activity_scores("proj", ["l0", "zz"]) == [1_000, None]
    assert await st.prune_gone("proj", [("l0", 1_000)]) == 1
    assert await st.count_sessions("proj") == 5
    await st.forget_session(keys.session("proj", "l1"))
    assert await st.backfill_project_indexes() >= 1
    await st.attach(s, "conn-1", 10_000)
    assert await st.refresh_attached(s, "conn-1", 10_000)
    assert await st.attached_count(s) == 1
    meta, _, attached = await st.session_overview(s)
    assert meta["project"] == "proj" and attached == 1
    assert await st.read_log(s) and await st.last_seq(s) == 3  # (run_b ended by ingestAdvance)
    await st.request_cancel(s, "run_x")
    assert await st.sweep_sessions([(s, "run_x"), (keys.session("proj", "m1"), "")])
    assert await st.replicas_alive(["r1", "r2", "nobody"]) == [True, True, False]
    assert await st.mark_replica_draining("r1")
    assert not await st.mark_replica_draining("nobody")
    assert not await client.exists(keys.replica("nobody").lease)  # never resurrected
    assert (await st.replica_info("r1")).fields["draining"] == "1"
    await st.retire_session(s, "expired", "test", 60_000)
    await st.revive_session(s)
    await st.delete_session_state(s)
    await st.forget_replica("r2")
    # the control: a call that mixes two sessions' keys is refused (by redis-py's slot
    # check before it is sent, and by the node itself: CROSSSLOT)
    a, b = keys.session("proj", "a"), keys.session("proj", "b")
    assert key_slot(a.lease.encode()) != key_slot(b.lease.encode())
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await store.scripts.script("acquireLease")(
            [a.lease, b.epoch, a.meta, a.history], ["r1", "i", 1000]
        )
    with (
        sync_client({"STREAMWARD_REDIS_URL": cluster.master_for_key(a.lease).url}) as node,
        pytest.raises(ResponseError, match="don't hash to the same slot"),
    ):
        node.eval("return 1", 2, a.lease, b.lease)


async def test_sessions_spread_over_every_master_and_renew_in_one_call(
    cluster: LocalCluster, store: LeaseStore
) -> None:
    held = await _hold(store, 300)
    sessions = [s for s, _ in held]
    by_master = Counter(cluster.master_for_key(s.lease).port for s in sessions)
    assert len(by_master) == 3, by_master
    result = await store.renew_many("r1", "i1", held, 60_000)
    assert len(result.renewed) == 300 and not result.lost
    # a lease taken over meanwhile is reported lost, the others renewed
    await store.force_release(sessions[0])
    result = await store.renew_many("r1", "i1", held, 60_000)
    assert [s for s, _ in result.lost] == [sessions[0]] and len(result.renewed) == 299


async def test_scripts_come_back_after_the_cache_is_flushed(
    cluster: LocalCluster, store: LeaseStore
) -> None:
    """What a promoted replica looks like to the client: no script is loaded. Single calls
    and the per-node renewal pipelines both fall back to SCRIPT LOAD (NOSCRIPT)."""
    held = await _hold(store, 50)
    sha = store.scripts.script("renewLeases").sha
    for node in cluster.masters():
        with sync_client({"STREAMWARD_REDIS_URL": node.url}) as c:
            c.script_flush()
            assert c.script_exists(sha) == [False]
    result = await store.renew_many("r1", "i1", held, 60_000)
    assert len(result.renewed) == 50
    found = await probe(store.client)  # scripting still fine, and single calls reload too
    assert found.ok
    await store.release(held[0][0], "r1", "i1", held[0][1])
    for node in cluster.masters():
        with sync_client({"STREAMWARD_REDIS_URL": node.url}) as c:
            assert c.script_exists(sha) == [True]


def test_fleet_on_cluster_survives_a_master_failover(own_cluster: LocalCluster) -> None:
    """API + 3 runners on the cluster: detached and streamed runs complete, sessions land on
    all three masters; SIGKILL the work queue's master; after the replica takes over, new and
    in-flight invocations complete, nothing acknowledged is lost, no log has a stale write."""
    cluster = own_cluster
    sessions = [f"c{i:02d}" for i in range(30)]
    with running_fleet(cluster.env(), 3, cluster.nodes) as (fleet, client):
        first = first_wave(fleet, client, sessions, streamed=3)
        lease_keys = {sid: KEYS.session("default", sid).lease for sid in sessions}
        masters = Counter(cluster.master_for_key(k).port for k in lease_keys.values())
        assert len(masters) == 3, masters  # sessions land on all three masters
        # every session key of one session on one node: the hash tag works end to end
        for sid in sessions:
            sk = KEYS.session("default", sid)
            assert len({key_slot(k.encode()) for k in (sk.lease, sk.log, sk.inbox, sk.meta)}) == 1

        cluster.wait_replication()  # what was acknowledged so far is on the replicas too
        # the master of the work queue: the hard case (an input can land on a surviving
        # master while asking for an owner fails); it holds sessions too
        victim = cluster.master_for_key(KEYS.work)
        victim_port = victim.port
        on_victim = [
            s for s in sessions if cluster.master_for_key(lease_keys[s]).port == victim_port
        ]
        during = Background(fleet.api_url, "during-").start()
        cluster.kill_master(victim)
        promoted = cluster.wait_failover(victim)
        assert promoted.port != victim_port
        second_wave(fleet, client, sessions, first, during)
        assert on_victim and all(
            cluster.master_for_key(lease_keys[s]).port == promoted.port for s in on_victim
        )
