"""Multi-process runner tests: real redis-server, the real API, runner processes, signals."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamward.tools.fleet import Fleet
from streamward.tools.server import free_port
from tests.runner.helpers import (
    KEYS,
    REPLICA_TTL_MS,
    assert_seqs,
    invoke,
    live_owner,
    owner,
    run_done,
    terminal,
    transcript,
    wait_until,
)

SLOW = {"text": "slow", "chunks": 40, "delay_ms": 100}  # ~4 s: long enough to kill mid-run


def _start_runners(fleet: Fleet, n: int, *args: str) -> dict[str, Any]:
    return {f"r{i}": fleet.start_runner(f"r{i}", args=list(args)) for i in range(1, n + 1)}


async def _invoke_many(api_url: str, ids: list[str]) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(25)
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:

        async def one(sid: str) -> dict[str, Any]:
            async with sem:
                resp = await client.post(
                    f"/v1/sessions/{sid}/invoke",
                    json={"input": {"text": sid}, "mode": "detached"},
                )
                assert resp.status_code == 202, resp.text
                body: dict[str, Any] = resp.json()
                return body

        return await asyncio.gather(*[one(s) for s in ids])


def test_300_sessions_spread_over_three_runners(api_fleet: Fleet, rc: Any) -> None:
    procs = _start_runners(api_fleet, 3)
    ids = [f"s{i:03d}" for i in range(300)]
    accepted = asyncio.run(_invoke_many(api_fleet.api_url, ids))
    assert all(a["status"] in ("running", "completed") for a in accepted)
    for sid, acc in zip(ids, accepted, strict=True):
        wait_until(run_done(rc, sid, acc["run_id"]), 30, f"{sid} done")
    holders: dict[str, str] = {}
    for sid in ids:
        own = owner(rc, sid)
        assert own is not None, f"{sid} has no owner"
        holders[sid] = own[0]
    # each session is in exactly one replica's lease index, and it is that lease's holder
    indexes = {r: set(rc.smembers(KEYS.replica(r).leases)) for r in procs}
    for sid, holder in holders.items():
        ref = f"default/{sid}"
        assert [r for r, refs in indexes.items() if ref in refs] == [holder]
    counts = {r: sum(1 for h in holders.values() if h == r) for r in procs}
    assert all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) == 300


def test_kill9_owner_mid_run_fails_over_within_ttl(api_fleet: Fleet, rc: Any) -> None:
    procs = _start_runners(api_fleet, 3)
    acc = invoke(api_fleet.api_url, "victim", SLOW)
    run_id, old = acc["run_id"], acc["owner"]["replica_id"]
    wait_until(
        lambda: sum(e.type == "run.output" for e in transcript(rc, "victim")) >= 3, 10, "outputs"
    )
    t0 = time.monotonic()
    procs[old].kill()
    new = wait_until(
        lambda: (o := live_owner(rc, "victim")) and o[0] != old and o, 15, "a new owner"
    )
    took_s = time.monotonic() - t0
    # the stated bound: replica TTL + 1 s
    assert took_s <= REPLICA_TTL_MS / 1000 + 1.0, f"takeover took {took_s:.2f}s"
    done = wait_until(lambda: terminal(transcript(rc, "victim"), run_id), 20, "the re-run")
    entries = transcript(rc, "victim")
    assert_seqs(entries)
    assert done.type == "run.completed"
    assert done.data == {"outputs": 40}
    kinds = [e.type for e in entries if e.type != "run.output"]
    assert kinds == ["run.started", "run.interrupted", "run.started", "run.completed"]
    first, interrupted, second, _ = (e for e in entries if e.type != "run.output")
    assert first.data["attempt"] == 1 and first.data["replica_id"] == old
    assert interrupted.data["reason"] == "owner_death"
    assert interrupted.data["previous_replica_id"] == old
    assert interrupted.data["policy"] == "restart"
    assert second.data["attempt"] == 2 and second.data["replica_id"] == new[0]
    assert {e.run_id for e in entries} == {run_id}
    # every entry after the takeover carries the new token; the re-run is complete
    after = entries[entries.index(interrupted) :]
    assert all(e.token == new[1] for e in after)
    assert [e.data["i"] for e in after if e.type == "run.output"] == list(range(40))


def test_sigstop_owner_cannot_write_after_resuming(api_fleet: Fleet, rc: Any) -> None:
    procs = _start_runners(api_fleet, 2)
    acc = invoke(api_fleet.api_url, "paused", {"text": "p", "chunks": 60, "delay_ms": 100})
    run_id, old = acc["run_id"], acc["owner"]["replica_id"]
    old_token = acc["owner"]["token"]
    old_incarnation = rc.hget(KEYS.replica(old).lease, "incarnation")
    wait_until(
        lambda: sum(e.type == "run.output" for e in transcript(rc, "paused")) >= 3, 10, "outputs"
    )
    procs[old].signal(signal.SIGSTOP)
    try:
        new = wait_until(
            lambda: (o := live_owner(rc, "paused")) and o[0] != old and o, 15, "takeover"
        )
        wait_until(
            lambda: any(
                e.token == new[1] and e.type == "run.output" for e in transcript(rc, "paused")
            ),
            10,
            "the new owner's outputs",
        )
        old_count = sum(e.token == old_token for e in transcript(rc, "paused"))
    finally:
        procs[old].signal(signal.SIGCONT)
    # the resumed runner fences itself, drops the session and re-registers
    wait_until(
        lambda: rc.hget(KEYS.replica(old).lease, "incarnation") not in (None, old_incarnation),
        15,
        "re-registration with a new incarnation",
    )
    wait_until(lambda: terminal(transcript(rc, "paused"), run_id), 20, "the re-run")
    entries = transcript(rc, "paused")
    assert_seqs(entries)
    assert sum(e.token == old_token for e in entries) == old_count
    interrupted = next(i for i, e in enumerate(entries) if e.type == "run.interrupted")
    assert all(e.token == new[1] for e in entries[interrupted:])
    assert all(e.token == old_token for e in entries[:interrupted])
    assert entries[-1].type == "run.completed"
    assert owner(rc, "paused") == new
    assert "default/paused" not in rc.smembers(KEYS.replica(old).leases)
    assert procs[old].alive()
    log = procs[old].log()
    assert "self-fencing" in log or "replica lease lost" in log
    assert "dropping session default/paused" in log


def test_sigterm_hands_over_at_once_and_waiting_run_completes(api_fleet: Fleet, rc: Any) -> None:
    procs = _start_runners(api_fleet, 2)
    first = invoke(api_fleet.api_url, "handover", {"text": "a", "chunks": 4, "delay_ms": 100})
    old = first["owner"]["replica_id"]
    waiting: dict[str, Any] = {}
    caller = threading.Thread(
        target=lambda: waiting.update(invoke(api_fleet.api_url, "handover", {"text": "b"}))
    )
    caller.start()
    sk = KEYS.session("default", "handover")
    wait_until(lambda: rc.xlen(sk.inbox) >= 2, 10, "the second input to wait in the inbox")
    t0 = time.monotonic()
    procs[old].signal(signal.SIGTERM)
    new = wait_until(
        lambda: (o := live_owner(rc, "handover")) and o[0] != old and o, 10, "the new owner"
    )
    took_s = time.monotonic() - t0
    assert took_s <= 1.0, f"handover took {took_s:.2f}s"
    assert procs[old].popen.wait(30) == 0
    caller.join(30)
    second_id = waiting["run_id"]
    done = wait_until(lambda: terminal(transcript(rc, "handover"), second_id), 20, "second run")
    entries = transcript(rc, "handover")
    assert_seqs(entries)
    assert [e.type for e in entries if e.type != "run.output"] == [
        "run.started", "run.completed", "run.started", "run.completed",
    ]  # fmt: skip
    first_done = terminal(entries, first["run_id"])
    assert first_done is not None and first_done.data == {"outputs": 4}
    assert done.token == new[1]
    assert waiting["owner"] is None or waiting["owner"]["replica_id"] == new[0]
    assert not rc.exists(KEYS.replica(old).lease)


def test_drain_timeout_interrupts_and_next_owner_restarts(api_fleet: Fleet, rc: Any) -> None:
    procs = _start_runners(api_fleet, 2, "--drain-timeout", "0.5")
    acc = invoke(api_fleet.api_url, "cut", {"text": "c", "chunks": 30, "delay_ms": 100})
    old, run_id = acc["owner"]["replica_id"], acc["run_id"]
    wait_until(lambda: any(e.type == "run.output" for e in transcript(rc, "cut")), 10, "output")
    procs[old].signal(signal.SIGTERM)
    assert procs[old].popen.wait(30) == 0
    done = wait_until(lambda: terminal(transcript(rc, "cut"), run_id), 20, "the restarted run")
    entries = transcript(rc, "cut")
    assert_seqs(entries)
    assert done.type == "run.completed"
    interrupted = [e for e in entries if e.type == "run.interrupted"]
    assert len(interrupted) == 1
    assert interrupted[0].data["reason"] == "drain_timeout"
    starts = [e for e in entries if e.type == "run.started"]
    assert [s.data["attempt"] for s in starts] == [1, 2]
    assert starts[1].data["replica_id"] != old


@pytest.mark.parametrize("policy", ["drop", "queue"])
def test_owner_death_policies(api_fleet: Fleet, rc: Any, policy: str) -> None:
    procs = _start_runners(api_fleet, 2)
    acc = invoke(api_fleet.api_url, "pol", {"text": "x", "chunks": 50, "delay_ms": 100})
    old, run_id = acc["owner"]["replica_id"], acc["run_id"]
    sk = KEYS.session("default", "pol")
    rc.hset(sk.meta, "on_owner_death", policy)
    # a second input waits behind the running one (enqueued without waiting for its start)
    threading.Thread(
        target=lambda: invoke(api_fleet.api_url, "pol", {"text": "later"}), daemon=True
    ).start()
    wait_until(lambda: rc.xlen(sk.inbox) >= 2, 10, "the queued input")
    procs[old].kill()
    interrupted = wait_until(
        lambda: next((e for e in transcript(rc, "pol") if e.type == "run.interrupted"), None),
        15,
        "run.interrupted",
    )
    assert interrupted.data["policy"] == policy
    if policy == "drop":
        wait_until(lambda: rc.hget(sk.meta, "status") == "dead", 10, "status dead")
        entries = transcript(rc, "pol")
        assert_seqs(entries)
        cancelled = [e for e in entries if e.type == "run.cancelled"]
        assert len(cancelled) == 2 and all(e.data == {"reason": "drop"} for e in cancelled)
        assert cancelled[0].run_id == run_id
        assert rc.xlen(sk.inbox) == 0
        assert not [e for e in entries if e.type == "run.started" and e.data["attempt"] == 2]
    else:
        time.sleep(1.0)  # nothing may run while the inputs are held
        entries = transcript(rc, "pol")
        assert entries[-1].type == "run.interrupted"
        assert rc.xlen(sk.inbox) == 2
        third = invoke(api_fleet.api_url, "pol", {"text": "next"})
        wait_until(lambda: terminal(transcript(rc, "pol"), third["run_id"]), 30, "all three")
        entries = transcript(rc, "pol")
        assert_seqs(entries)
        done = [e for e in entries if e.type == "run.completed"]
        assert len(done) == 3 and done[0].run_id == run_id
        restarted = [e for e in entries if e.type == "run.started" and e.run_id == run_id]
        assert [e.data["attempt"] for e in restarted] == [1, 2]


def test_drain_mail_from_the_admin_api_and_metrics(api_fleet: Fleet, rc: Any) -> None:
    ports = {rid: free_port() for rid in ("m1", "m2")}
    procs = {
        rid: api_fleet.start_runner(rid, args=["--metrics-port", str(port)])
        for rid, port in ports.items()
    }
    acc = invoke(api_fleet.api_url, "drained", {"text": "x"})
    wait_until(run_done(rc, "drained", acc["run_id"]), 10, "the run")
    # the metrics of the runner that ran it (either may take the work)
    port = ports[acc["owner"]["replica_id"]]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "streamward_runner_sessions" in metrics
    assert 'streamward_runner_runs_total{outcome="completed"}' in metrics
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(metrics)
        for x in fam.samples
    }
    assert samples[("streamward_runner_heartbeat_last_success_timestamp_seconds", ())] > 1e9
    # its script calls (registration, heartbeats) left through auto-pipelining
    calls = samples[("streamward_redis_autopipeline_calls_total", ())]
    assert calls >= samples[("streamward_redis_autopipeline_batches_total", ())] > 0
    scripts = {
        dict(lb).get("script")
        for (n, lb), v in samples.items()
        if n == "streamward_redis_script_duration_seconds_count" and v > 0
    }
    assert "renewReplica" in scripts
    assert any(n == "streamward_build_info" for n, _ in samples)
    old = acc["owner"]["replica_id"]
    resp = httpx.post(
        f"{api_fleet.api_url}/admin/replicas/{old}/drain",
        headers={"authorization": f"Bearer {api_fleet.admin_token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert procs[old].popen.wait(30) == 0
    assert owner(rc, "drained") is None  # released, nothing pending: nobody needs to own it
    again = invoke(api_fleet.api_url, "drained", {"text": "y"})
    assert again["owner"]["replica_id"] != old
    wait_until(run_done(rc, "drained", again["run_id"]), 10, "the run on the other runner")
