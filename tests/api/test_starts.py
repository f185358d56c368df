"""Detached invoke learning its run's start from this process's ingest (api/starts.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

import streamward.api.starts
from streamward.api.deps import AppState
from streamward.api.starts import TRUST_ABOVE, StartWaiters
from streamward.lua.store import Entry, LeaseStore
from tests.api.helpers import RunnerSide


def _E(type: str, data: object = None, token: int = 1) -> Entry:
    return Entry(1, type, data, token=token)


def _state(app: FastAPI) -> AppState:
    state: AppState = app.state.sw
    return state


async def test_waiters_resolve_on_the_first_start_or_end_of_their_run() -> None:
    w = StartWaiters()
    fut = w.register("p/s", "run_a")
    w.ingested("p/s", "run_b", [_E("run.started", {"replica_id": "r"}, 3)])  # another run
    w.ingested("p/s", "run_a", [_E("run.output", None, 3), _E("run.interrupted", None, 3)])
    assert not fut.done()
    w.ingested(
        "p/s", "run_a", [_E("run.output", None, 4), _E("run.started", {"replica_id": "r2"}, 4)]
    )
    got = fut.result()
    assert (got.type, got.token, got.started_by) == ("run.started", 4, "r2")
    w.ingested("p/s", "run_a", [_E("run.started", {"replica_id": "r3"}, 5)])  # first one wins
    assert fut.result().started_by == "r2"
    other = w.register("p/s", "run_c")
    w.ingested("p/s", "run_c", [_E("run.cancelled", {"reason": "cancel"}, 2)])
    assert (other.result().type, other.result().started_by) == ("run.cancelled", "")


async def test_trust_is_learnt_from_where_starts_were_ingested(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streamward.api.starts, "SCORE_AFTER_S", 0.0)
    w = StartWaiters()
    assert not w.trusted  # distrustful until it has seen starts ingested here
    for i in range(200):
        w.register("p/s", f"run_{i}")
        w.ingested("p/s", f"run_{i}", [_E("run.started", {})])
        w.done("p/s", f"run_{i}", waited=True)
    w.register("p/s", "flush")  # scoring happens on the next registration
    w.done("p/s", "flush", waited=False)
    assert w.trusted and w.local_share > TRUST_ABOVE
    # starts ingested elsewhere (another API process) take the trust away again
    for i in range(10):
        w.register("p/s", f"far_{i}")
        w.done("p/s", f"far_{i}", waited=True)
    w.register("p/s", "flush-2")
    w.done("p/s", "flush-2", waited=False)
    assert not w.trusted
    # answers that did not wait (queued, or read from the run state) are not scored
    share = w.local_share
    for i in range(10):
        w.register("p/s", f"q_{i}")
        w.done("p/s", f"q_{i}", waited=False)
    w.register("p/s", "flush-3")
    assert w.local_share == share
    assert list(w._waits) == [("p/s", "flush-3")]  # scored or not, ended waits are forgotten


async def test_trusted_invoke_is_answered_from_this_process_ingest(
    app: FastAPI, client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    starts = _state(app).starts
    starts.local_share = 1.0
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    token = await runner.claim("s1")
    await runner.ingest("s1", item.run_id, ("run.interrupted", {"reason": "owner_death"}))
    await asyncio.sleep(0.05)
    assert not task.done()  # an interruption is no start
    await runner.start("s1", item.run_id)
    r = await task
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "running"
    assert body["owner"] == {"replica_id": "replica-a", "token": token}
    metrics = (await client.get("/metrics")).text
    assert 'streamward_api_start_waits_total{how="memory"} 1.0' in metrics
    assert 'streamward_api_start_waits_total{how="log"} 0.0' in metrics


async def test_trusted_invoke_still_sees_a_start_ingested_elsewhere(
    app: FastAPI,
    client: httpx.AsyncClient,
    runner: RunnerSide,
    store: LeaseStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streamward.api.starts, "LOCAL_WAIT_S", 0.05)
    monkeypatch.setattr("streamward.api.invoke.LOCAL_WAIT_S", 0.05)
    _state(app).starts.local_share = 1.0
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    token = await runner.claim("s1")
    # written as another API process would: straight to Redis, this process never sees it
    await store.ingest(
        runner.keys("s1"), item.run_id, token, [Entry(1, "run.started", {"replica_id": "x"})]
    )
    r = await task
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running" and r.json()["owner"]["replica_id"] == "x"
    metrics = (await client.get("/metrics")).text
    assert 'streamward_api_start_waits_total{how="log"} 1.0' in metrics
