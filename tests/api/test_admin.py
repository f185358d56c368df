"""Admin endpoints: ingest, heartbeat, stream detach, locks, replicas, drain; the admin guard."""

from __future__ import annotations

import httpx
import pytest

from streamward.api.schemas import ForceReleaseResult, LockOut, LockPage, ReplicaOut
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.api.helpers import ADMIN, RunnerSide, assert_problem

pytestmark = pytest.mark.usefixtures("no_start_wait")


def _ingest_body(token: int, *entries: dict[str, object], run_id: str = "run_x") -> object:
    return {"session_id": "s1", "run_id": run_id, "token": token, "entries": list(entries)}


async def test_ingest_accepts_counts_duplicates_and_is_idempotent(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    token = await runner.claim("s1")
    batch = [
        {"seq": 1, "type": "run.started", "data": {"replica_id": "replica-a"}},
        {"seq": 2, "type": "run.output", "data": {"x": [1, "two"]}, "ts": "2024-05-01T10:00:00Z"},
    ]
    url = "/admin/sessions/transcripts/ingest"
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token, *batch))
    assert r.status_code == 200
    assert r.json() == {"accepted": 2, "duplicates": 0, "last_seq": 2}
    # a replayed batch (a retry after a lost answer) changes nothing
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token, *batch))
    assert r.json() == {"accepted": 0, "duplicates": 2, "last_seq": 2}
    more = {"seq": 3, "type": "run.completed", "data": None, "ts": "2024-05-01T12:00:00+02:00"}
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token, batch[1], more))
    assert r.json() == {"accepted": 1, "duplicates": 1, "last_seq": 3}
    log = await streams.read_log(streams.keys.session("default", "s1"))
    assert [e.seq for e in log] == [1, 2, 3]
    assert log[1].data == {"x": [1, "two"]}
    assert log[1].ts_ms == 1714557600000 and log[2].ts_ms == 1714557600000


async def test_ingest_refusals(client: httpx.AsyncClient, runner: RunnerSide) -> None:
    url = "/admin/sessions/transcripts/ingest"
    e1 = {"seq": 1, "type": "run.started", "data": {}}
    # never acquired: nobody's token is current
    assert_problem(
        await client.post(url, headers=ADMIN, json=_ingest_body(1, e1)), 409, "stale_token"
    )
    token = await runner.claim("s1")
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token + 1, e1))
    assert_problem(r, 409, "stale_token")
    gap = {"seq": 3, "type": "run.output", "data": 1}
    body = assert_problem(
        await client.post(url, headers=ADMIN, json=_ingest_body(token, e1, gap)), 422, "seq_gap"
    )
    assert (body["last_seq"], body["seq"]) == (0, 3)
    bad_ts = {"seq": 1, "type": "run.started", "ts": "yesterday"}
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token, bad_ts))
    assert_problem(r, 422, "invalid_timestamp")
    naive = {"seq": 1, "type": "run.started", "ts": "2024-05-01T10:00:00"}
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token, naive))
    assert_problem(r, 422, "invalid_timestamp")
    for bad in (
        {"seq": 0, "type": "run.started"},
        {"seq": 1, "type": "Not A Type"},
        {"seq": 1, "type": "run.started", "extra": 1},
    ):
        r = await client.post(url, headers=ADMIN, json=_ingest_body(token, bad))
        assert_problem(r, 422, "validation_error")
    r = await client.post(url, headers=ADMIN, json={**_ingest_body(token, e1), "session_id": "a b"})  # type: ignore[dict-item]
    assert_problem(r, 422, "validation_error")
    r = await client.post(url, headers=ADMIN, json=_ingest_body(token))
    assert_problem(r, 422, "validation_error")  # an empty batch


async def test_heartbeat_renews_and_reports_lost(
    client: httpx.AsyncClient, runner: RunnerSide, store: LeaseStore
) -> None:
    t1 = await runner.claim("s1")
    t2 = await runner.claim("s2")
    await store.force_release(runner.keys("s2"))
    body = {
        "replica_id": "replica-a",
        "incarnation": "replica-a-inc",
        "leases": [{"session_id": "s1", "token": t1}, {"session_id": "s2", "token": t2}],
        "lease_ttl_ms": 30_000,
        "replica_ttl_ms": 5_000,
    }
    r = await client.post("/admin/sessions/streams/heartbeat", headers=ADMIN, json=body)
    assert r.status_code == 200
    assert r.json() == {"renewed": ["s1"], "lost": ["s2"], "reasons": {"s2": "expired"}}
    own = await store.ownership(runner.keys("s1"))
    assert own.lease_ttl_ms is not None and own.lease_ttl_ms <= 30_000
    assert own.replica_ttl_ms is not None and own.replica_ttl_ms <= 5_000
    r = await client.post(
        "/admin/sessions/streams/heartbeat", headers=ADMIN, json={**body, "incarnation": "old"}
    )
    assert_problem(r, 409, "replica_lost")


async def test_stream_detach_is_owner_checked(
    client: httpx.AsyncClient, runner: RunnerSide, store: LeaseStore
) -> None:
    token = await runner.claim("s1")
    body = {"replica_id": "replica-a", "incarnation": "x", "session_id": "s1", "token": token}
    url = "/admin/sessions/streams/detach"
    assert_problem(await client.post(url, headers=ADMIN, json=body), 409, "not_owner")
    body["incarnation"] = "replica-a-inc"
    r = await client.post(url, headers=ADMIN, json=body)
    assert r.json() == {"session_id": "s1", "released": True}
    assert not (await store.ownership(runner.keys("s1"))).held
    r = await client.post(url, headers=ADMIN, json=body)
    assert r.json() == {"session_id": "s1", "released": False}


async def test_locks_states_list_get_and_force_release(
    client: httpx.AsyncClient, runner: RunnerSide, store: LeaseStore, streams: Streams
) -> None:
    for sid in ("held", "orphan", "free"):
        await client.post(f"/v1/sessions/{sid}/invoke", json={"mode": "detached"})
    token = await runner.claim("held")
    dead = RunnerSide(client, store, streams, "replica-dead")
    await dead.register()
    await dead.claim("orphan")
    await streams.delete_replica_lease("replica-dead", "replica-dead-inc")

    page = LockPage.model_validate((await client.get("/admin/locks", headers=ADMIN)).json())
    states = {x.session_id: x.state for x in page.items}
    assert states == {"held": "held", "orphan": "orphaned", "free": "free"}
    by_replica = (await client.get("/admin/locks?replica=replica-a", headers=ADMIN)).json()
    assert [x["session_id"] for x in by_replica["items"]] == ["held"]

    lock = LockOut.model_validate((await client.get("/admin/locks/held", headers=ADMIN)).json())
    assert (lock.holder, lock.incarnation, lock.token, lock.epoch) == (
        "replica-a",
        "replica-a-inc",
        token,
        token,
    )
    assert lock.acquired_at is not None and lock.expires_in_ms is not None

    r = await client.post("/admin/locks/held/release", headers=ADMIN)
    res = ForceReleaseResult.model_validate(r.json())
    assert res.before.state == "held" and res.after.state == "free"
    assert res.after.epoch == token + 1  # the old owner is fenced
    # the session had a pending input: it is back on the work queue for a new owner
    work = await streams.client.xrange(streams.keys.work)
    assert ("default/held", "force_release") in [(f["session"], f["reason"]) for _, f in work]

    # the ownership history names the move and says it is Redis's alone (no record here)
    hist = (await client.get("/admin/sessions/held/history", headers=ADMIN)).json()
    assert [(e["event"], e["reason"]) for e in hist["events"]][:2] == [
        ("force_released", "admin"),
        ("acquired", ""),
    ]
    assert hist["record"] is False


async def test_replicas_list_and_drain(
    client: httpx.AsyncClient, runner: RunnerSide, store: LeaseStore, streams: Streams
) -> None:
    await runner.claim("s1")
    dead = RunnerSide(client, store, streams, "replica-dead")
    await dead.register()
    await streams.delete_replica_lease("replica-dead", "replica-dead-inc")
    reps = [
        ReplicaOut.model_validate(x)
        for x in (await client.get("/admin/replicas", headers=ADMIN)).json()
    ]
    by_id = {r.replica_id: r for r in reps}
    assert by_id["replica-a"].state == "ready" and by_id["replica-a"].leases == 1
    assert by_id["replica-a"].incarnation == "replica-a-inc"
    assert by_id["replica-dead"].state == "dead"

    r = await client.post("/admin/replicas/replica-a/drain", headers=ADMIN)
    assert r.json() == {"replica_id": "replica-a", "status": "draining"}
    mail = await streams.read_mail("replica-a", "0-0", block_ms=1)
    assert [m.kind for m in mail] == ["drain"]
    reps = (await client.get("/admin/replicas", headers=ADMIN)).json()
    a = next(x for x in reps if x["replica_id"] == "replica-a")
    assert a["draining"] is True and a["state"] == "draining"
    # the lease keeps its TTL (the HSET did not make it permanent)
    assert (await streams.replica_info("replica-a")).ttl_ms is not None
    r = await client.post("/admin/replicas/replica-dead/drain", headers=ADMIN)
    assert_problem(r, 404, "unknown_replica")


ADMIN_CALLS = [
    ("GET", "/admin/locks"),
    ("GET", "/admin/locks/s1"),
    ("POST", "/admin/locks/s1/release"),
    ("GET", "/admin/replicas"),
    ("POST", "/admin/replicas/r1/drain"),
    ("POST", "/admin/sessions/transcripts/ingest"),
    ("POST", "/admin/sessions/streams/heartbeat"),
    ("POST", "/admin/sessions/streams/detach"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_admin_guard(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_problem(await client.request(method, path), 401, "missing_token")
    r = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert_problem(r, 403, "invalid_token")
    r = await client.request(method, path, headers={"Authorization": "Basic dGVzdA=="})
    assert_problem(r, 401, "missing_token")
