"""Helpers for the topology tests: invoke through the API (riding out failovers), wait for runs,
read transcripts, and the shared end-to-end scenario run on Cluster and on Sentinel."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson

from streamward.lua.client import connect_sync
from streamward.lua.config import redis_config_from_env
from streamward.lua.keys import Keys
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer
from streamward.tools.topology import log_tails
from tests.fencing import check_log_fencing, read_log
from tests.runner.helpers import wait_until

T = TypeVar("T")
KEYS = Keys()
# runner settings for these tests: a 2 s replica TTL keeps owner-death recovery short
RUNNER_ENV = {"STREAMWARD_REPLICA_TTL_MS": "2000", "STREAMWARD_LOG_LEVEL": "info"}


def invoke(
    api_url: str, session_id: str, text: str, *, retry_for_s: float = 60.0
) -> dict[str, Any]:
    """Detached invoke; a 503 or a dropped connection (Redis failing over) is retried until
    ``retry_for_s`` has passed, with an idempotency key so that a retry of an input Redis did
    take never runs twice. Returns the 202 body: the invocation is acknowledged."""
    deadline = time.monotonic() + retry_for_s
    while True:
        try:
            resp = httpx.post(
                f"{api_url}/v1/sessions/{session_id}/invoke",
                json={"input": {"text": text}, "mode": "detached", "idempotency_key": text},
                timeout=30,
            )
            if resp.status_code == 202:
                body: dict[str, Any] = resp.json()
                return body
            if resp.status_code != 503:
                raise AssertionError(f"invoke {session_id}: {resp.status_code} {resp.text}")
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"invoke {session_id} not accepted in {retry_for_s}s")
        time.sleep(0.1)


def stream(api_url: str, session_id: str, text: str, chunks: int = 3) -> list[dict[str, Any]]:
    """Attached invoke: every NDJSON entry of the run, up to its terminal entry."""
    entries: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{api_url}/v1/sessions/{session_id}/invoke",
        json={"input": {"text": text, "chunks": chunks}},
        timeout=60,
    ) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.strip():
                entries.append(orjson.loads(line))
    return entries


def run_status(client: Any, session_id: str, run_id: str) -> str | None:
    raw = client.hget(KEYS.session("default", session_id).runs, run_id)
    return None if raw is None else str(orjson.loads(raw)["status"])


def wait_runs(client: Any, runs: dict[str, str], timeout_s: float) -> None:
    """Wait until every (session → run id) has completed."""
    pending = dict(runs)

    def done() -> bool:
        for sid, run_id in list(pending.items()):
            try:
                status = run_status(client, sid, run_id)
            except Exception:  # a node failing over: ask again later
                return False
            if status == "completed":
                del pending[sid]
            elif status in ("failed", "cancelled"):
                raise AssertionError(f"{sid} run {run_id} ended {status}")
        return not pending

    wait_until(done, timeout_s, f"{len(pending)} runs to complete: {sorted(pending)[:5]}...")


def completed_runs(client: Any, session_id: str) -> set[str]:
    return {
        e["run_id"]
        for e in read_log(client, KEYS, f"default/{session_id}")
        if e["type"] == "run.completed"
    }


@dataclass
class Background:
    """Detached invokes sent in a loop from a thread while the test does something else."""

    api_url: str
    prefix: str
    accepted: dict[str, str] = field(default_factory=dict)  # session -> run id
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> Background:
        def loop() -> None:
            i = 0
            while not self.stop.is_set():
                sid = f"{self.prefix}{i:03d}"
                try:
                    self.accepted[sid] = invoke(self.api_url, sid, sid, retry_for_s=90)["run_id"]
                except BaseException as exc:
                    self.errors.append(exc)
                    return
                i += 1
                time.sleep(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def finish(self) -> dict[str, str]:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(120)
        assert not self.errors, self.errors
        return dict(self.accepted)


def sync_client(env: dict[str, str]) -> Any:
    return connect_sync(redis_config_from_env(env), socket_timeout=5.0)


@contextmanager
def running_fleet(
    env: dict[str, str], runners: int, servers: list[RedisServer]
) -> Iterator[tuple[Fleet, Any]]:
    """An API and ``runners`` runners on the topology's STREAMWARD_REDIS_* ``env``, and a sync
    client to it; all stopped after. On a failure, the processes' and ``servers``' logs."""
    client = sync_client(env)
    fleet = Fleet(env["STREAMWARD_REDIS_URL"], env={**env, **RUNNER_ENV})
    try:
        fleet.start_api()
        for i in range(1, runners + 1):
            fleet.start_runner(f"r{i}")
        yield fleet, client
    except BaseException:
        print(fleet_logs(fleet))
        print(log_tails(servers))
        raise
    finally:
        fleet.stop()
        client.close()


def first_wave(fleet: Fleet, client: Any, sessions: list[str], streamed: int) -> dict[str, str]:
    """Detached invokes of every session, plus ``streamed`` attached ones; all complete."""
    runs = {sid: invoke(fleet.api_url, sid, f"{sid}-1")["run_id"] for sid in sessions}
    for sid in sessions[:streamed]:
        wait_runs(client, {sid: runs[sid]}, 60)
        entries = stream(fleet.api_url, sid, f"{sid}-streamed", chunks=3)
        types = [e["type"] for e in entries]
        assert types == ["run.started", "run.output", "run.output", "run.output", "run.completed"]
        assert [e["data"]["text"] for e in entries if e["type"] == "run.output"] == [
            f"{sid}-streamed"
        ] * 3
    wait_runs(client, runs, 90)
    return runs


def second_wave(
    fleet: Fleet, client: Any, sessions: list[str], first: dict[str, str], during: Background
) -> None:
    """After a failover: a new invoke of every session and the ``during`` ones complete; every
    acknowledged run is in its log, no log has a stale write, every process is alive."""
    after = {sid: invoke(fleet.api_url, sid, f"{sid}-2")["run_id"] for sid in sessions}
    in_flight = during.finish()
    wait_runs(client, after, 120)
    wait_runs(client, in_flight, 120)
    acknowledged = {sid: {first[sid], after[sid]} for sid in sessions}
    acknowledged.update({sid: {run} for sid, run in in_flight.items()})
    assert_fenced_and_complete(client, acknowledged, [*sessions, *in_flight])
    assert all(p.alive() for p in fleet.procs), fleet_logs(fleet)


def assert_fenced_and_complete(
    client: Any, acknowledged: dict[str, set[str]], sessions: list[str]
) -> None:
    """Every acknowledged run completed and is still in its log; no log has a stale write."""
    problems: list[str] = []
    for sid in sessions:
        log = read_log(client, KEYS, f"default/{sid}")
        problems += check_log_fencing(log, sid)
        done = {e["run_id"] for e in log if e["type"] == "run.completed"}
        missing = acknowledged.get(sid, set()) - done
        if missing:
            problems.append(f"{sid}: acknowledged runs missing from the log: {sorted(missing)}")
    assert problems == []


def fleet_logs(fleet: Fleet, chars: int = 2500) -> str:
    return "\n".join(f"--- {p.name}:\n{p.log()[-chars:]}" for p in fleet.procs)
