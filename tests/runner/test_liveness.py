"""Liveness against real processes: force release mid-run, the pending-index sweep, a burst
bigger than any work-stream trim, and operator actions under a running run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.fleet import Fleet
from tests.runner.helpers import (
    KEYS,
    REPLICA_TTL_MS,
    LogItem,
    assert_seqs,
    invoke,
    live_owner,
    terminal,
    transcript,
    wait_until,
)

SLOW = {"text": "slow", "chunks": 30, "delay_ms": 100}  # ~3 s
SWEEP_S = 0.5


def _admin(fleet: Fleet) -> dict[str, str]:
    return {"authorization": f"Bearer {fleet.admin_token}"}


def _run_done(rc: Any, sid: str, run_id: str) -> Callable[[], LogItem | None]:
    return lambda: terminal(transcript(rc, sid), run_id)


def _history(fleet: Fleet, sid: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{fleet.api_url}/admin/sessions/{sid}/history", headers=_admin(fleet), timeout=10
    )
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


@pytest.mark.parametrize("runners", [1, 2])
def test_force_release_mid_run_interrupts_and_reruns(
    api_fleet: Fleet, rc: Any, runners: int
) -> None:
    # a sweep far slower than the test: the re-run must come from the release itself
    env = {"STREAMWARD_SWEEP_INTERVAL_S": "60"}
    for i in range(1, runners + 1):
        api_fleet.start_runner(f"r{i}", env=env)
    acc = invoke(api_fleet.api_url, "fr", SLOW)
    run_id, old = acc["run_id"], acc["owner"]["replica_id"]
    wait_until(
        lambda: sum(e.type == "run.output" for e in transcript(rc, "fr")) >= 3, 10, "outputs"
    )
    resp = httpx.post(
        f"{api_fleet.api_url}/admin/locks/fr/release",
        params={"reason": "stuck handler"},
        headers=_admin(api_fleet),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["before"]["holder"] == old
    done = wait_until(lambda: terminal(transcript(rc, "fr"), run_id), 20, "the re-run")
    assert done.type == "run.completed"
    entries = transcript(rc, "fr")
    assert_seqs(entries)
    kinds = [e.type for e in entries if e.type != "run.output"]
    assert kinds == ["run.started", "run.interrupted", "run.started", "run.completed"]
    interrupted = next(e for e in entries if e.type == "run.interrupted")
    assert interrupted.data["reason"] == "force_release"
    assert interrupted.data["release_reason"] == "stuck handler"
    assert interrupted.data["policy"] == "restart"
    assert interrupted.data["previous_replica_id"] == old
    sk = KEYS.session("default", "fr")
    wait_until(lambda: rc.xlen(sk.inbox) == 0, 10, "nothing pending")
    events = _history(api_fleet, "fr")
    forced = [e for e in events if e["event"] == "force_released"]
    assert len(forced) == 1 and forced[0]["reason"] == "stuck handler"
    assert forced[0]["replica_id"] == old
    # newest first: the re-run's acquisition follows the force release
    assert events.index(forced[0]) > 0 and events[0]["event"] in ("acquired", "released")


async def _enqueue_unannounced(redis_url: str, ids: list[str]) -> None:
    """Inputs accepted (inbox + pending index) whose wake-up never reached sw:work."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = LeaseStore(client, Keys())
        for sid in ids:
            await store.enqueue(KEYS.session("default", sid), f"run_{sid}", '{"text": "x"}')
    finally:
        await client.aclose()


def test_ownerless_session_without_work_entry_gets_an_owner(
    api_fleet: Fleet, rc: Any, redis_server: Any
) -> None:
    api_fleet.start_runner("r1", env={"STREAMWARD_SWEEP_INTERVAL_S": str(SWEEP_S)})
    asyncio.run(_enqueue_unannounced(redis_server.url, ["lost1", "lost2"]))
    rc.delete(KEYS.work)  # whatever wake-up there was, it is gone
    t0 = time.monotonic()
    for sid in ("lost1", "lost2"):
        wait_until(_run_done(rc, sid, f"run_{sid}"), 20, f"{sid} run")
    took_s = time.monotonic() - t0
    # the bound: replica TTL + grace + sweep interval (+ claim and run time)
    assert took_s <= REPLICA_TTL_MS / 1000 + 2 * SWEEP_S + 2.0, f"took {took_s:.2f}s"
    # once the inboxes are empty the sweep prunes the index
    wait_until(lambda: rc.zcard(KEYS.pending) == 0, 10, "an empty pending index")


def test_burst_beyond_any_trim_reaches_a_terminal_for_every_session(
    api_fleet: Fleet, rc: Any, redis_server: Any
) -> None:
    n = 2000
    ids = [f"b{i}" for i in range(n)]

    async def burst() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            store, streams = LeaseStore(client, Keys()), Streams(client, Keys())
            await streams.ensure_work_group()
            for start in range(0, n, 50):
                chunk = ids[start : start + 50]
                await asyncio.gather(
                    *[
                        store.enqueue(KEYS.session("default", s), f"run_{s}", '{"text": "x"}')
                        for s in chunk
                    ]
                )
                await streams.publish_work_many(
                    [KEYS.session("default", s).ref for s in chunk], "invoke"
                )
        finally:
            await client.aclose()

    asyncio.run(burst())
    # no runner yet: every wake-up is unread, and none was trimmed (500 stranded 1,241)
    assert rc.xlen(KEYS.work) == n
    env = {"STREAMWARD_SWEEP_INTERVAL_S": "2", "STREAMWARD_CLOSE_DELAY_S": "0"}
    api_fleet.start_runner("r1", env=env)
    api_fleet.start_runner("r2", env=env)

    def all_done() -> bool:
        pipe = rc.pipeline(transaction=False)
        for s in ids:
            pipe.xlen(KEYS.session("default", s).inbox)
        return sum(int(x) for x in pipe.execute()) == 0

    wait_until(all_done, 240, "every inbox empty", interval_s=1.0)
    missing = [s for s in ids if terminal(transcript(rc, s), f"run_{s}") is None]
    assert missing == []


def test_delete_and_drain_under_a_running_run_strand_nothing(api_fleet: Fleet, rc: Any) -> None:
    env = {"STREAMWARD_SWEEP_INTERVAL_S": str(SWEEP_S)}
    api_fleet.start_runner("r1", env=env)
    # delete with a running run: nothing pending afterwards, no owner left behind
    acc = invoke(api_fleet.api_url, "del", SLOW)
    wait_until(lambda: any(e.type == "run.output" for e in transcript(rc, "del")), 10, "output")
    resp = httpx.delete(f"{api_fleet.api_url}/v1/sessions/del", timeout=10)
    assert resp.status_code == 200, resp.text
    sk = KEYS.session("default", "del")
    assert rc.xlen(sk.inbox) == 0
    time.sleep(1.5)
    assert live_owner(rc, "del") is None
    # the fenced owner cannot end its run: the delete itself writes the one terminal
    ends = [
        e for e in transcript(rc, "del") if e.run_id == acc["run_id"] and e.type != "run.output"
    ]
    assert [e.type for e in ends] == ["run.started", "run.cancelled"]
    assert ends[1].data["reason"] in ("deleted", "cancel")
    # the session is usable again: a new input runs to the end
    again = invoke(api_fleet.api_url, "del", {"text": "again"})
    wait_until(lambda: terminal(transcript(rc, "del"), again["run_id"]), 15, "the new run")
    assert acc["run_id"] != again["run_id"]

    # drain of the only runner with inputs waiting: they run on the next runner
    slow = invoke(api_fleet.api_url, "dr", SLOW)
    later = [
        httpx.post(
            f"{api_fleet.api_url}/v1/sessions/dr/invoke",
            json={"input": {"text": f"later{i}"}, "mode": "detached"},
            timeout=60,
        )
        for i in range(2)
    ]
    assert all(r.status_code == 202 for r in later)
    resp = httpx.post(
        f"{api_fleet.api_url}/admin/replicas/r1/drain", headers=_admin(api_fleet), timeout=10
    )
    assert resp.status_code == 200, resp.text
    api_fleet.start_runner("r2", env=env)
    for run_id in [slow["run_id"], *[r.json()["run_id"] for r in later]]:
        wait_until(_run_done(rc, "dr", run_id), 30, f"run {run_id}")
    assert rc.xlen(KEYS.session("default", "dr").inbox) == 0


def test_reset_while_running_loses_no_accepted_input(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", env={"STREAMWARD_SWEEP_INTERVAL_S": str(SWEEP_S)})
    route = {
        "route_id": "chat",
        "source": "slack",
        "on": ["message"],
        "session": {"key_template": "chat"},
        "input_expr": "{text: text, chunks: `20`, delay_ms: `100`}",
    }
    admin = _admin(api_fleet)
    with httpx.Client(base_url=api_fleet.api_url, timeout=30.0) as http:
        assert http.post("/admin/routes", json=route, headers=admin).status_code == 201

        def event(text: str) -> dict[str, Any]:
            r = http.post(
                "/v1/events/slack",
                json={"type": "message", "payload": {"chat_id": "C1", "text": text}},
            )
            assert r.status_code < 300, r.text
            out: dict[str, Any] = r.json()["sessions"][0]
            return out

        first, second = event("one"), event("two")  # the second waits behind the first
        old = first["session_id"]
        assert old, first
        assert second["session_id"] == old
        wait_until(lambda: any(e.type == "run.output" for e in transcript(rc, old)), 10, "output")
        r = http.post(
            "/admin/routes/chat/reset", json={"session_key": first["session_key"]}, headers=admin
        )
        assert r.status_code == 200, r.text
        # a reset never happens under a running run: this event joins the old generation
        third = event("three")
        assert third["session_id"] == old
        for run_id in (first["run_id"], second["run_id"], third["run_id"]):
            done = wait_until(_run_done(rc, old, run_id), 30, f"{run_id} of the old generation")
            assert done.type == "run.completed"
        # quiet now: the pending reset is taken by the next event
        fourth = event("four")
        assert fourth["session_id"] != old  # a new generation
        done = wait_until(_run_done(rc, fourth["session_id"], fourth["run_id"]), 30, "the new one")
        assert done.type == "run.completed"
        meta = rc.hgetall(KEYS.session("default", fourth["session_id"]).meta)
        assert {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}.get(
            "reset_reason"
        ) in ("manual", b"manual")
        assert rc.xlen(KEYS.session("default", old).inbox) == 0
