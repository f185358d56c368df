"""Helpers for the runner tests: transcript and ownership reads, invoke, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import redis

from streamward.core.contract import TERMINAL_TYPES
from streamward.lua.keys import Keys

T = TypeVar("T")

REPLICA_TTL_MS = 2000
RUNNER_ENV = {"STREAMWARD_REPLICA_TTL_MS": str(REPLICA_TTL_MS), "STREAMWARD_LOG_LEVEL": "info"}
KEYS = Keys()


@dataclass(frozen=True)
class LogItem:
    seq: int
    type: str
    run_id: str
    token: int
    data: Any


def sync_redis(url: str) -> Any:
    """A decoding sync client (typed Any: redis-py's sync reply types are unions)."""
    return redis.Redis.from_url(url, decode_responses=True)


def transcript(client: Any, session_id: str, project: str = "default") -> list[LogItem]:
    sk = KEYS.session(project, session_id)
    return [
        LogItem(
            seq=int(f["seq"]),
            type=f["type"],
            run_id=f["run_id"],
            token=int(f["token"]),
            data=orjson.loads(f["data"]),
        )
        for _, f in client.xrange(sk.log)
    ]


def owner(client: Any, session_id: str, project: str = "default") -> tuple[str, int] | None:
    """(replica, token) holding the session lease, or None."""
    lease = client.hgetall(KEYS.session(project, session_id).lease)
    if not lease:
        return None
    return str(lease["replica"]), int(lease["token"])


def live_owner(client: Any, session_id: str) -> tuple[str, int] | None:
    """The owner when its replica lease is alive too (the lease is valid), else None."""
    own = owner(client, session_id)
    if own is None or not client.exists(KEYS.replica(own[0]).lease):
        return None
    return own


def wait_until(
    pred: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.02
) -> T:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def invoke(
    api_url: str, session_id: str, input: Any, mode: str = "detached", **extra: Any
) -> dict[str, Any]:
    resp = httpx.post(
        f"{api_url}/v1/sessions/{session_id}/invoke",
        json={"input": input, "mode": mode, **extra},
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_seqs(entries: list[LogItem]) -> None:
    """Seqs are exactly 1..n: no gap, no duplicate."""
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))


def terminal(entries: list[LogItem], run_id: str) -> LogItem | None:
    for e in entries:
        if e.run_id == run_id and e.type in TERMINAL_TYPES:
            return e
    return None


def run_done(client: Any, session_id: str, run_id: str) -> Callable[[], LogItem | None]:
    """A ``wait_until`` predicate: the run's terminal entry once it is in the transcript."""
    return lambda: terminal(transcript(client, session_id), run_id)
