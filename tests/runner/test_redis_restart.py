"""Redis restarted under a running fleet: runners fence themselves, then carry on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from streamward.tools.fleet import Fleet, Proc
from streamward.tools.server import RedisServer
from tests.runner.helpers import (
    KEYS,
    RUNNER_ENV,
    assert_seqs,
    invoke,
    run_done,
    sync_redis,
    transcript,
    wait_until,
)


def _invoke_retrying(api_url: str, sid: str, input: Any) -> dict[str, Any]:
    """Invoke like a well-behaved client: retry a 503 (the API's pool reconnecting)."""
    deadline = time.monotonic() + 15
    while True:
        resp = httpx.post(
            f"{api_url}/v1/sessions/{sid}/invoke",
            json={"input": input, "mode": "detached"},
            timeout=30,
        )
        if resp.status_code != 503 or time.monotonic() > deadline:
            assert resp.status_code == 202, resp.text
            body: dict[str, Any] = resp.json()
            return body
        time.sleep(float(resp.headers.get("retry-after", "0.2")) / 5)


def _logged(proc: Proc, text: str) -> Callable[[], bool]:
    return lambda: text in proc.log()


def _registered(rc: Any, replica_id: str) -> Callable[[], str | None]:
    return lambda: rc.hget(KEYS.replica(replica_id).lease, "incarnation")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    # not the shared server: this test stops it and starts it again on the same port
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def test_runners_fence_then_recover_when_redis_returns(own_redis: RedisServer) -> None:
    with Fleet(own_redis.url, env=dict(RUNNER_ENV)) as fleet:
        fleet.start_api()
        procs = {r: fleet.start_runner(r) for r in ("a1", "a2")}
        before = invoke(fleet.api_url, "pre", {"text": "before"})
        rc = sync_redis(own_redis.url)
        try:
            wait_until(run_done(rc, "pre", before["run_id"]), 10, "first run")
            incarnations = {r: rc.hget(KEYS.replica(r).lease, "incarnation") for r in procs}
        finally:
            rc.close()

        own_redis.stop()
        for r, p in procs.items():
            wait_until(_logged(p, "self-fencing"), 10, f"{r} to fence itself")
        time.sleep(0.5)
        own_redis.start()  # same port, empty data: every key is gone

        rc = sync_redis(own_redis.url)
        try:
            for r in procs:
                wait_until(_registered(rc, r), 15, f"{r} to register again")
                assert rc.hget(KEYS.replica(r).lease, "incarnation") != incarnations[r]
            # new invocations complete, on a new session and on the one Redis forgot
            for sid in ("post-1", "pre"):
                acc = _invoke_retrying(fleet.api_url, sid, {"text": "after", "chunks": 3})
                assert acc["status"] == "running", acc
                done = wait_until(run_done(rc, sid, acc["run_id"]), 15, sid)
                assert done.type == "run.completed"
                assert_seqs(transcript(rc, sid))
            assert all(p.alive() for p in procs.values())
        finally:
            rc.close()
