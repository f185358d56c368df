"""Poison inputs against real processes: a runner survives large inputs queued behind a slow
run, and an input that takes its owners down ends ``run.failed`` poison after N owners
without touching the other sessions' runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from streamward.lua.client import connect
from streamward.lua.store import LeaseStore
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.server import RedisServer, free_port
from tests.runner.helpers import (
    KEYS,
    LogItem,
    invoke,
    owner,
    run_done,
    transcript,
    wait_until,
)

HANDLER = ["--handler", "tests.runner.poison_handler:handle"]


def _runner(fleet: Fleet, replica_id: str, wait_s: float = 30.0) -> tuple[Proc, int]:
    port = free_port()
    args = [*HANDLER, "--metrics-port", str(port)]
    return fleet.start_runner(replica_id, args=args, wait_s=wait_s), port


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def _started(rc: Any, attempt: int) -> Callable[[], list[LogItem]]:
    """A ``wait_until`` predicate: the poison session's run.started entries of ``attempt``."""

    def pred() -> list[LogItem]:
        entries = transcript(rc, "poison")
        return [e for e in entries if e.type == "run.started" and e.data["attempt"] == attempt]

    return pred


def test_large_inputs_behind_a_slow_run_do_not_starve_the_heartbeat(
    api_fleet: Fleet, rc: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    """60 inputs of ~1.3 MB queue behind a slow run: no self-fence, no takeover, all run.

    The issue's case (inputs of about 1 MiB): when the slow run ends, the whole backlog is
    waiting in the inbox.
    """
    api_fleet.env["STREAMWARD_REPLICA_TTL_MS"] = "1000"  # a self-fence after a 0.9 s stall
    api = api_fleet.api_url
    proc, port = _runner(api_fleet, "big1")
    gate = tmp_path / "slow-run-may-end"
    slow = invoke(api, "big", {"gate": str(gate)})
    # small objects: costly to parse (one large string would not be); appended straight to
    # the inbox, as the API would, which spends longer validating them than the test can wait
    blob = [{"i": i, "s": "abcdefgh"} for i in range(48_000)]
    text = orjson.dumps({"blob": blob}).decode()
    run_ids = [f"run_big_{i:02d}" for i in range(60)]

    async def enqueue() -> None:
        client = connect(redis_server.url)
        try:
            store = LeaseStore(client, KEYS)
            for run_id in run_ids:
                await store.enqueue(KEYS.session("default", "big"), run_id, text)
        finally:
            await client.aclose()

    asyncio.run(enqueue())
    gate.touch()
    wait_until(run_done(rc, "big", run_ids[-1]), 120, "the last large input's run")
    entries = transcript(rc, "big")
    done = [e for e in entries if e.type == "run.completed"]
    slow_kinds = [(e.type, e.data) for e in entries if e.run_id == slow["run_id"]]
    assert slow_kinds[-1][0] == "run.completed", slow_kinds
    assert [e.run_id for e in done] == [slow["run_id"], *run_ids]
    assert all(e.data == {"outputs": 1} for e in done)
    outputs = [e.data for e in entries if e.type == "run.output"]
    assert outputs == [{"gated": True}] + [{"bytes": len(blob)}] * 60
    assert not [e for e in entries if e.type == "run.interrupted"]
    # one owner, one token the whole time: the replica never fenced itself
    assert {e.token for e in entries} == {entries[0].token}
    assert owner(rc, "big") == ("big1", entries[0].token)
    assert _metric(port, "streamward_runner_fenced_total") == 0
    assert proc.alive()


def test_a_poison_input_ends_after_three_owners_and_other_sessions_are_not_interrupted(
    api_fleet: Fleet, rc: Any, tmp_path: Path
) -> None:
    api = api_fleet.api_url
    runners = {rid: _runner(api_fleet, rid) for rid in ("p1", "p2")}
    healthy = [f"healthy-{i}" for i in range(8)]

    def healthy_round() -> None:
        accs = [invoke(api, sid, {"text": sid}) for sid in healthy]
        for sid, acc in zip(healthy, accs, strict=True):
            done = wait_until(run_done(rc, sid, acc["run_id"]), 30, f"{sid} done")
            assert done.type == "run.completed"

    healthy_round()
    poison = invoke(api, "poison", {"poison": True, "gate_dir": str(tmp_path)})
    run_id = poison["run_id"]
    for attempt in (1, 2, 3):
        started = wait_until(_started(rc, attempt), 30, f"attempt {attempt} started")
        victim = started[-1].data["replica_id"]
        # the healthy sessions run while the poison run is in progress, spread over both
        # runners, and are idle when its owner goes down
        healthy_round()
        (tmp_path / f"kill-{attempt}").touch()
        assert runners[victim][0].popen.wait(15) == -9
        runners[victim] = _runner(api_fleet, victim)  # a new incarnation of that replica
    failed = wait_until(run_done(rc, "poison", run_id), 30, "the poison run's end")
    assert failed.type == "run.failed"
    assert failed.data["error_type"] == "poison"
    assert failed.data["attempts"] == 3
    healthy_round()
    # never delivered again: its inbox entry is completed, no fourth start
    wait_until(lambda: rc.xlen(KEYS.session("default", "poison").inbox) == 0, 10, "inbox empty")
    time.sleep(1.0)
    kinds = [e.type for e in transcript(rc, "poison") if e.run_id == run_id]
    assert kinds.count("run.started") == 3
    assert kinds.count("run.interrupted") == 2  # owners 1 and 2; the third ends it
    assert kinds[-1] == "run.failed"
    # the other sessions' runs were never interrupted
    interrupted = {
        sid: sum(e.type == "run.interrupted" for e in transcript(rc, sid)) for sid in healthy
    }
    assert interrupted == dict.fromkeys(healthy, 0)
    # operators see it: the metric on the runner that ended it, the lock in the admin API
    assert (
        sum(_metric(port, "streamward_runner_poison_inputs_total") for _, port in runners.values())
        == 1
    )
    lock = httpx.get(
        f"{api}/admin/locks/poison",
        headers={"authorization": f"Bearer {api_fleet.admin_token}"},
        timeout=5,
    ).json()
    assert lock["poison_runs"] == 1 and lock["last_poison_run_id"] == run_id
    # the session itself is fine: the next input runs
    after = invoke(api, "poison", {"text": "after"})
    assert wait_until(run_done(rc, "poison", after["run_id"]), 30, "next run").type == (
        "run.completed"
    )


def test_a_poison_input_that_kills_before_anything_is_written_still_ends(
    api_fleet: Fleet, rc: Any
) -> None:
    """The owner dies before its run.started reaches the log, every time: the transcript
    knows nothing, yet peekInbox counted the owners that took the input, and the fourth
    ends it (before this count, it went round the fleet for good)."""
    api = api_fleet.api_url
    runners = {rid: _runner(api_fleet, rid) for rid in ("q1", "q2")}
    poison = invoke(api, "instant", {"poison_now": True})
    run_id = poison["run_id"]
    meta_key = KEYS.session("default", "instant").meta
    deaths = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not rc.hget(meta_key, "last_poison_run_id"):
        for rid, (proc, _) in list(runners.items()):
            if not proc.alive():  # a supervisor's restart, as a StatefulSet would
                deaths += 1
                # not waiting for it to be up: it may take the poison input and die before
                # a readiness check sees it (the next pass counts that death)
                runners[rid] = _runner(api_fleet, rid, wait_s=0)
        time.sleep(0.1)
    failed = wait_until(run_done(rc, "instant", run_id), 30, "the poison run's end")
    assert failed.type == "run.failed" and failed.data["error_type"] == "poison"
    assert failed.data["attempts"] == 3
    assert deaths == 3
    wait_until(lambda: rc.xlen(KEYS.session("default", "instant").inbox) == 0, 10, "inbox empty")
