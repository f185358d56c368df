"""Detached invoke learning its run's start from this process's ingest (api/starts.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

import streamward.api.starts
from streamward.api.deps import AppState
from streamward.api.starts import TRUST_ABOVE, StartWaiters
from streamward.lua.store import Entry, LeaseStore
from streamward.lua.streams import Streams
from streamward.lua.work import StartNotice
from tests.api.helpers import RunnerSide, wait_for


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


async def test_notices_that_do_not_come_are_learnt(monkeypatch: pytest.MonkeyPatch) -> None:
    # runners whose Redis user may not publish: notified waits end without a notice
    monkeypatch.setattr(streamward.api.starts, "SCORE_AFTER_S", 0.0)
    w = StartWaiters()
    assert w.notices_trusted  # a fresh process trusts them

    def wait(run_id: str, noticed: bool, notified: bool = True) -> None:
        w.register("p/s", run_id, notified=notified)
        if noticed:
            w.announced(StartNotice("p/s", run_id, "r", 1))
        w.done("p/s", run_id, waited=True)

    for i in range(3):
        wait(f"run_{i}", noticed=True)
    wait("flush", noticed=True)
    assert w.notices_trusted
    for i in range(6):
        wait(f"silent_{i}", noticed=False)
    w.register("p/s", "flush-2")  # (scoring happens on the next registration)
    w.done("p/s", "flush-2", waited=False)
    assert not w.notices_trusted  # a few silent waits are enough
    # waits that named no channel say nothing about notices
    share = w.notice_share
    for i in range(20):
        wait(f"plain_{i}", noticed=False, notified=False)
    w.register("p/s", "flush-3")  # (scoring happens on the next registration)
    w.done("p/s", "flush-3", waited=False)
    assert w.notice_share == share
    for i in range(200):  # the owners publish again
        wait(f"back_{i}", noticed=True)
    w.register("p/s", "flush-4")  # (scoring happens on the next registration)
    w.done("p/s", "flush-4", waited=False)
    assert w.notices_trusted


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


# -- start notices (api/startfeed.py): the owner's word, before the transcript ----------------


def test_a_start_notice_round_trips_and_anything_else_is_not_one() -> None:
    notice = StartNotice("p/s", "run_a", "replica-a", 7)
    assert StartNotice.parse(notice.encode()) == notice
    assert StartNotice.parse(notice.encode().decode()) == notice
    junk = [b"", b"hello", b"[]", b'{"a": 1}', b'["p/s", "run_a", "r"]']
    junk += [
        b'["p/s", "run_a", "r", "7"]',
        b'["p/s", "run_a", 3, 7]',
        b'["p/s", "run_a", "r", true]',
    ]
    for raw in junk:
        assert StartNotice.parse(raw) is None, raw


async def _subscribed(app: FastAPI) -> str:
    starts = _state(app).starts

    async def subscribed() -> bool:
        return bool(starts.channel)

    await wait_for(subscribed, "the start feed to subscribe")
    return starts.channel


async def test_the_owners_notice_answers_the_invoke_before_any_transcript(
    app: FastAPI,
    client: httpx.AsyncClient,
    runner: RunnerSide,
    streams: Streams,
    redis_client: aioredis.Redis,
) -> None:
    channel = await _subscribed(app)
    _state(app).starts.local_share = 1.0
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    assert item.starts_to == channel  # the invoke named this process's channel
    token = await runner.claim("s1")
    await redis_client.publish(channel, b"not a notice")  # ignored, as one for another run
    await streams.publish_start(channel, StartNotice("default/s1", "run_other", "x", token))
    await asyncio.sleep(0.05)
    assert not task.done()
    await streams.publish_start(channel, StartNotice("default/s1", item.run_id, "replica-a", token))
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    assert r.json()["owner"] == {"replica_id": "replica-a", "token": token}
    assert await streams.read_log(runner.keys("s1")) == []  # nothing of the run is stored yet
    metrics = (await client.get("/metrics")).text
    assert 'streamward_api_start_waits_total{how="memory"} 1.0' in metrics


async def test_a_fresh_process_that_named_its_channel_waits_for_the_notice_in_memory(
    app: FastAPI,
    client: httpx.AsyncClient,
    runner: RunnerSide,
    streams: Streams,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No learning needed: a process that has not yet scored a single start (a cold burst
    right after it started) must not tail the log, a blocking XREAD and a connection per
    invoke, while the owner's notice is on its way to it."""
    channel = await _subscribed(app)
    assert not _state(app).starts.trusted
    # a loaded machine may take a while to claim the input: no race with the 250 ms wait
    monkeypatch.setattr("streamward.api.invoke.LOCAL_WAIT_S", 10.0)
    tails: list[str] = []
    real_wait_log = Streams.wait_log

    async def wait_log(self: Streams, sk: Any, *args: Any, **kwargs: Any) -> Any:
        tails.append(sk.ref)
        return await real_wait_log(self, sk, *args, **kwargs)

    monkeypatch.setattr(Streams, "wait_log", wait_log)
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    token = await runner.claim("s1")
    await streams.publish_start(channel, StartNotice("default/s1", item.run_id, "replica-a", token))
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 202 and r.json()["status"] == "running", r.text
    assert tails == []
    # a process that learnt its notices do not come tails the log at once (and still
    # takes a notice that does come)
    _state(app).starts.notice_share = 0.0
    task = asyncio.create_task(
        client.post("/v1/sessions/s3/invoke", json={"input": 1, "mode": "detached"})
    )
    [item3] = await runner.wait_inbox("s3")
    token3 = await runner.claim("s3")

    async def tailing() -> bool:
        return "default/s3" in tails

    await wait_for(tailing, "the invoke to tail the log")
    await streams.publish_start(channel, StartNotice("default/s3", item3.run_id, "r", token3))
    r = await asyncio.wait_for(task, 5)
    assert r.json()["status"] == "running"
    _state(app).starts.notice_share = 1.0
    # an idempotent retry answers for the first request's run, whose notice went wherever
    # that request named: it tails the log (no owner here: both answer queued at the timeout,
    # which is shorter than the in-memory wait: a retry waiting in memory never tails)
    monkeypatch.setattr(_state(app).settings, "start_timeout_s", 0.2)
    body = {"input": 1, "mode": "detached", "idempotency_key": "k1"}
    first = await client.post("/v1/sessions/s2/invoke", json=body)
    assert first.status_code == 202 and first.json()["status"] == "queued"
    tails.clear()
    again = await client.post("/v1/sessions/s2/invoke", json=body)
    assert again.json()["run_id"] == first.json()["run_id"] and "default/s2" in tails


async def test_a_cancel_right_after_a_notice_answered_running_cancels_that_run(
    app: FastAPI,
    client: httpx.AsyncClient,
    runner: RunnerSide,
    streams: Streams,
    store: LeaseStore,
) -> None:
    """The notice answers ``running`` once the owner took the input, before its run.started
    (which marks the run active) is stored: a cancel sent at once must still find the run."""
    channel = await _subscribed(app)
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    token = await runner.claim("s1")
    sk = runner.keys("s1")
    peek = await store.peek_inbox(sk, 10, token=token)  # the owner's take, recorded
    assert peek.owners == 1
    await streams.publish_start(channel, StartNotice("default/s1", item.run_id, "replica-a", token))
    r = await asyncio.wait_for(task, 5)
    assert r.json()["status"] == "running"
    got = await client.post("/v1/sessions/s1/cancel", json={})
    assert got.status_code == 202, got.text
    assert got.json()["run_id"] == item.run_id and got.json()["status"] == "cancelling"
    assert await streams.cancel_requested(sk, item.run_id)
    # once its input is consumed the taken head names no run: nothing to cancel
    await store.complete_input(sk, token, item.id)
    again = await client.post("/v1/sessions/s1/cancel", json={})
    assert again.status_code == 409 and again.json()["code"] == "no_active_run"


async def test_a_streamed_invoke_names_no_channel(
    app: FastAPI, client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    """Only a detached invoke waits for the start; a stream follows the log anyway."""
    await _subscribed(app)
    task = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"input": 1}))
    [item] = await runner.wait_inbox("s1")
    assert item.starts_to == ""
    await runner.claim("s1")
    await runner.start("s1", item.run_id)
    await runner.ingest("s1", item.run_id, ("run.completed", {}))
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 200 and '"run.completed"' in r.text


async def test_the_feed_subscribes_again_after_losing_its_connection(
    app: FastAPI,
    client: httpx.AsyncClient,
    runner: RunnerSide,
    streams: Streams,
    redis_client: aioredis.Redis,
) -> None:
    channel = await _subscribed(app)
    feed = app.state.start_feed
    assert feed.subscriptions == 1
    assert await redis_client.client_kill_filter(_type="pubsub") >= 1

    async def again() -> bool:  # (while it is down the process names no channel)
        return bool(feed.subscriptions == 2)

    await wait_for(again, "the feed to subscribe again", 5)
    assert await _subscribed(app) == channel
    _state(app).starts.local_share = 1.0
    task = asyncio.create_task(
        client.post("/v1/sessions/s2/invoke", json={"input": 1, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s2")
    assert item.starts_to == channel
    token = await runner.claim("s2")
    await streams.publish_start(channel, StartNotice("default/s2", item.run_id, "replica-a", token))
    r = await asyncio.wait_for(task, 5)
    assert r.json()["status"] == "running" and r.json()["owner"]["token"] == token


async def test_a_refused_subscription_names_no_channel_and_invokes_use_the_log(
    make_settings: Any, redis_client: aioredis.Redis
) -> None:
    """A Redis user without the channel (ACL): the feed is refused, the process names no
    channel, and a peek asked to announce still answers (its PUBLISH refused, not failed)."""
    from tests.api.conftest import running_app

    await redis_client.acl_setuser(
        "nochan", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all"],
        reset_channels=True,
    )  # fmt: skip
    try:
        url = make_settings().redis_url.replace("redis://", "redis://nochan:pw@", 1)
        async with running_app(make_settings(redis_url=url)) as app:
            feed = app.state.start_feed
            await asyncio.sleep(0.5)  # refused at once, retried after a backoff
            assert feed.subscriptions == 0 and _state(app).starts.channel == ""
            state = _state(app)
            sk = state.keys.session("default", "acl")
            ch = state.keys.starts_channel("elsewhere")
            await state.store.enqueue(sk, "run_a", "{}", starts_to=ch)
            lease = await state.store.acquire(sk, "r1", "i1", 60_000)
            peek = await state.store.peek_inbox(sk, 10, token=lease.token, announce=("r1", 0))
            assert peek.owners == 1 and not peek.announced  # the take stands, no notice
    finally:
        await redis_client.acl_deluser("nochan")


async def test_stopping_the_feed_at_any_moment_of_its_subscribe_ends_it(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.11's asyncio.wait_for (redis-py wraps each command write in it) loses a cancel
    # landing as the write completes (cpython#86296): stop() must not rely on one cancel.
    # Stopping after every number of loop steps through connect + SUBSCRIBE hits that window.
    from streamward.api import startfeed
    from streamward.api.main import make_redis
    from streamward.lua.keys import Keys

    monkeypatch.setattr(startfeed, "CLOSE_WAIT_S", 0.5)
    for steps in range(30):
        client = make_redis(settings)
        feed = startfeed.StartFeed(client, Keys(), StartWaiters())
        feed.start()
        task = feed._task
        assert task is not None
        for _ in range(steps):
            await asyncio.sleep(0)
        await feed.stop()
        alive = not task.done()
        if alive:
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        await client.aclose()
        assert not alive, f"the feed still runs after stop() at step {steps}"
