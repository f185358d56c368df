"""A full Redis (maxmemory, noeviction) does not fence the fleet: real redis-server (the
bundled 6.2 and the machine's own when it is another), the real API, two runner processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from redis.exceptions import OutOfMemoryError

from streamward.tools.fleet import Fleet, Proc
from streamward.tools.server import RedisServer
from tests.lua.test_renew_under_oom import redis_binaries
from tests.runner.helpers import (
    KEYS,
    REPLICA_TTL_MS,
    RUNNER_ENV,
    invoke,
    owner,
    run_done,
    sync_redis,
    wait_until,
)

SESSIONS = [f"held{i}" for i in range(6)]


@pytest.fixture(scope="module", params=redis_binaries())
def own_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server of its own: the shared one must stay writable for other tests."""
    server = RedisServer(binary=request.param, extra_args=["--maxmemory-policy", "noeviction"])
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def full_fleet(own_redis: RedisServer) -> Iterator[tuple[Fleet, Any]]:
    rc = sync_redis(own_redis.url)
    rc.config_set("maxmemory", "0")
    rc.flushall()
    fleet = Fleet(own_redis.url, env=dict(RUNNER_ENV))
    try:
        fleet.start_api()
        yield fleet, rc
    finally:
        rc.config_set("maxmemory", "0")
        fleet.stop()
        rc.close()


def fill(rc: Any) -> None:
    """Hold maxmemory 1 MiB under what is used: every denyoom write is refused from now on."""
    for i in range(192):  # small values: a big one's query buffer is freed afterwards
        rc.set(f"filler:{i}", b"x" * 16 * 1024)
    time.sleep(0.2)  # let client buffers settle before measuring
    used = int(rc.info("memory")["used_memory"])
    rc.config_set("maxmemory", str(used - 1024 * 1024))
    with pytest.raises(OutOfMemoryError):
        rc.set("one-more", b"x")


def fleet_state(rc: Any, replicas: list[str]) -> dict[str, Any]:
    """Each replica's incarnation, each session's (owner, token) and epoch."""
    return {
        "incarnations": {r: rc.hget(KEYS.replica(r).lease, "incarnation") for r in replicas},
        "owners": {s: owner(rc, s) for s in SESSIONS},
        "epochs": {s: rc.get(KEYS.session("default", s).epoch) for s in SESSIONS},
    }


def test_a_full_redis_fences_no_runner_and_takes_nothing_over(
    full_fleet: tuple[Fleet, Any],
) -> None:
    fleet, rc = full_fleet
    replicas = ["r1", "r2"]
    procs = [fleet.start_runner(r) for r in replicas]
    for sid in SESSIONS:  # held afterwards: close_delay (60 s) keeps each session owned
        acc = invoke(fleet.api_url, sid, {"text": sid})
        wait_until(run_done(rc, sid, acc["run_id"]), 30, f"{sid} done")
    before = fleet_state(rc, replicas)
    assert all(before["owners"].values()) and all(before["incarnations"].values())
    assert {own[0] for own in before["owners"].values()} <= set(replicas)

    fill(rc)
    deadline = time.monotonic() + 2.5 * REPLICA_TTL_MS / 1000
    while time.monotonic() < deadline:  # well past 2 x TTL: every lease would have run out
        assert fleet_state(rc, replicas) == before
        assert all(p.alive() for p in procs)
        time.sleep(0.25)
    for p in procs:
        log = p.log()
        assert "self-fencing:" not in log and "dropping every session" not in log, log[-3000:]
        assert "redis refuses writes" in log, log[-3000:]

    refused = httpx.post(
        f"{fleet.api_url}/v1/sessions/new1/invoke", json={"input": 1, "mode": "detached"}
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "redis_unavailable"
    assert int(refused.headers["retry-after"]) >= 1

    rc.config_set("maxmemory", "0")
    for sid in ("new1", SESSIONS[0]):
        acc = invoke(fleet.api_url, sid, {"text": "after"})
        wait_until(run_done(rc, sid, acc["run_id"]), 30, f"{sid} done after the fill")
    after = fleet_state(rc, replicas)
    assert after["incarnations"] == before["incarnations"]  # nobody re-registered
    assert after["epochs"] == before["epochs"]  # no takeover, no re-acquire
    for p in procs:  # within a heartbeat tick
        wait_until(partial(_logged, p, "redis accepts writes again"), 5, f"{p.name} writes")


def _logged(proc: Proc, text: str) -> bool:
    return text in proc.log()
