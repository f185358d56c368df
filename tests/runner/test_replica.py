"""A replica in-process against real Redis and the real API: fencing, loss, idle, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import LogEntry, Streams
from streamward.lua.work import StartNotice
from streamward.runner import offloop
from streamward.runner.config import RunnerSettings
from streamward.runner.context import Handler, RunContext
from streamward.runner.handlers import echo
from streamward.runner.inbox import next_input
from streamward.runner.owner_death import SessionState
from streamward.runner.replica import Replica
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer


class Blocking:
    """A handler that runs until cancelled, recording attempts and cancellations."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.attempts: list[int] = []

    async def __call__(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        self.attempts.append(ctx.attempt)
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield None


async def wait_for(pred: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = pred()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def settings_for(url: str, api_url: str, fleet: Fleet, tmp_path: Path, **kw: Any) -> RunnerSettings:
    base: dict[str, Any] = {
        "redis_url": url,
        "api_url": api_url,
        "admin_token": fleet.admin_token,
        "replica_id": "inproc",
        "replica_ttl_ms": 2000,
        "drain_timeout_s": 0.2,
        "heartbeat_file": str(tmp_path / "heartbeat"),
    }
    base.update(kw)
    return RunnerSettings(**base)


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        await r.stop()


@dataclass
class OwnRedis:
    """A redis-server of the test's own (it may be SIGSTOPped), an API on it, a client."""

    server: RedisServer
    fleet: Fleet
    client: aioredis.Redis
    api_url: str


@pytest.fixture
async def own_redis(replicas: list[Replica]) -> AsyncIterator[OwnRedis]:
    server = RedisServer().start()
    fleet = Fleet(server.url)
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        api = await asyncio.to_thread(fleet.start_api)
        yield OwnRedis(server, fleet, client, api.url)
    finally:
        for r in replicas:  # before their Redis and API go
            await r.stop()
        replicas.clear()
        await client.aclose()
        await asyncio.to_thread(fleet.stop)
        server.cleanup()


def _gated(run_id: str) -> tuple[asyncio.Event, Handler]:
    """(gate, handler): the handler holds ``run_id`` until the gate is set; other runs end."""
    gate = asyncio.Event()

    async def handler(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        if ctx.run_id == run_id:
            await gate.wait()
        yield None

    return gate, handler


@contextlib.asynccontextmanager
async def _notices(client: aioredis.Redis, channel: str) -> AsyncIterator[Any]:
    """A pub/sub subscription to ``channel`` (start notices), closed on the way out."""
    heard = client.pubsub()
    await heard.subscribe(channel)
    try:
        yield heard
    finally:
        await heard.aclose()  # type: ignore[no-untyped-call, unused-ignore]


async def _start(replicas: list[Replica], settings: RunnerSettings, handler: Handler) -> Replica:
    replica = Replica(settings, handler)
    replicas.append(replica)
    await replica.start()
    return replica


async def _submit(
    store: LeaseStore, streams: Streams, sk: SessionKeys, run_id: str, inp: str
) -> None:
    """What the API's invoke does when no owner is alive: append, then ask for an owner."""
    await store.enqueue(sk, run_id, inp)
    await streams.publish_work(sk.ref, "invoke")


async def _entries(streams: Streams, sk: SessionKeys) -> list[LogEntry]:
    return await streams.read_log(sk, count=10_000)


async def test_self_fencing_stops_runs_then_recovers(
    replicas: list[Replica], own_redis: OwnRedis, tmp_path: Path
) -> None:
    server, fleet, client = own_redis.server, own_redis.fleet, own_redis.client
    handler = Blocking()
    s = settings_for(server.url, own_redis.api_url, fleet, tmp_path, replica_ttl_ms=1000)
    replica = await _start(replicas, s, handler)
    store, streams, sk = LeaseStore(client), Streams(client), Keys().session("default", "f")
    await _submit(store, streams, sk, "run_f", "{}")
    await asyncio.wait_for(handler.started.wait(), 10)
    assert (tmp_path / "heartbeat").exists()
    incarnation = replica.incarnation
    assert server.proc is not None
    loop = asyncio.get_running_loop()
    os.kill(server.proc.pid, signal.SIGSTOP)  # Redis hangs: renewals cannot succeed
    t0 = loop.time()
    try:
        await wait_for(lambda: replica.fenced, 5, "the replica to fence itself")
        fenced_after_s = loop.time() - t0
        # cancelled at once: the handler sees it within a few loop iterations
        await asyncio.wait_for(handler.cancelled.wait(), 1.0)
        assert not replica.actors
        assert not replica.can_write()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # it fenced before its lease could expire (at most one TTL after the last renew)
    assert fenced_after_s < s.replica_ttl_ms / 1000
    await wait_for(
        lambda: not replica.fenced and replica.incarnation != incarnation, 10, "re-registration"
    )
    # the session its old incarnation held is re-queued, taken over and restarted
    await wait_for(lambda: handler.attempts == [1, 2], 10, "the restart")
    await wait_for(_status(streams, sk, "run_f", "started"), 10, "run.started of the restart")
    types = [(e.type, e.data.get("attempt")) for e in await _entries(streams, sk)]
    assert types == [("run.started", 1), ("run.interrupted", None), ("run.started", 2)]
    own = await store.ownership(sk)
    assert own.incarnation == replica.incarnation and own.token == 2


async def test_lost_replica_lease_drops_sessions_and_reregisters(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    handler = Blocking()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, replica_ttl_ms=5000)
    replica = await _start(replicas, s, handler)
    streams, sk = Streams(redis_client), keys.session("default", "lost")
    await _submit(store, streams, sk, "run_l", "{}")
    await asyncio.wait_for(handler.started.wait(), 10)
    incarnation = replica.incarnation
    await redis_client.delete(keys.replica("inproc").lease)  # as if it had expired
    await wait_for(lambda: replica.incarnation != incarnation, 10, "a new incarnation")
    await asyncio.wait_for(handler.cancelled.wait(), 1.0)
    await wait_for(lambda: handler.attempts == [1, 2], 10, "the restart")
    own = await store.ownership(sk)
    assert own.incarnation == replica.incarnation and own.token == 2


async def test_idle_session_passivates_unless_attached_and_comes_back(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, close_delay_s=0.3)
    await _start(replicas, s, echo)
    streams, sk = Streams(redis_client), keys.session("default", "idle")
    await streams.attach(sk, "conn-1", 60_000)  # an attached client keeps it owned
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_status(streams, sk, "run_1", "completed"), 10, "the first run")
    await asyncio.sleep(0.6)
    assert (await store.ownership(sk)).held
    await streams.detach(sk)
    await wait_for(_not_held(store, sk), 10, "passivation")
    assert (await streams.meta(sk))["status"] == "passivated"
    await _submit(store, streams, sk, "run_2", '{"text": "b"}')
    await wait_for(_status(streams, sk, "run_2", "completed"), 10, "the second run")
    entries = await _entries(streams, sk)
    assert [e.seq for e in entries] == list(range(1, 7))


def _status(
    streams: Streams, sk: SessionKeys, run_id: str, status: str
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rs = await streams.run_state(sk, run_id)
        return rs is not None and rs.status == status

    return check


def _not_held(store: LeaseStore, sk: SessionKeys) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not (await store.ownership(sk)).held

    return check


async def test_max_sessions_bounds_what_a_replica_owns(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, max_sessions=2, close_delay_s=0.2)
    replica = await _start(replicas, s, echo)
    streams = Streams(redis_client)
    sks = [keys.session("default", f"cap-{i}") for i in range(5)]
    for i, sk in enumerate(sks):
        await _submit(store, streams, sk, f"run_{i}", '{"chunks": 2, "delay_ms": 50}')
    most = 0
    checks = [_status(streams, sk, f"run_{i}", "completed") for i, sk in enumerate(sks)]

    async def all_done() -> bool:
        nonlocal most
        most = max(most, len(replica.actors))
        return all([await c() for c in checks])

    await wait_for(all_done, 30, "every session to run")
    assert 1 <= most <= 2


async def test_cancel_running_and_queued_runs_and_interrupt(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path)
    await _start(replicas, s, echo)
    streams, sk = Streams(redis_client), keys.session("default", "cx")
    slow = '{"chunks": 100, "delay_ms": 100}'
    await _submit(store, streams, sk, "run_a", slow)
    await store.enqueue(sk, "run_b", '{"text": "b"}')
    await store.enqueue(sk, "run_c", '{"text": "c"}')
    await wait_for(_status(streams, sk, "run_a", "started"), 10, "run_a")
    rk = keys.replica("inproc").lease

    async def published() -> bool:
        fields = await redis_client.hgetall(rk)
        return fields.get("leases") == "1" and fields.get("inflight") == "1"

    await wait_for(published, 5, "leases/inflight in the replica hash")
    async with httpx.AsyncClient(base_url=api.url) as http:
        for run_id in ("run_b", "run_a"):  # a queued one first, then the running one
            resp = await http.post("/v1/sessions/cx/cancel", json={"run_id": run_id})
            assert resp.status_code == 202, resp.text
        await wait_for(_status(streams, sk, "run_c", "completed"), 10, "run_c")
        entries = await _entries(streams, sk)
        by_run = {r: [e.type for e in entries if e.run_id == r] for r in ("run_a", "run_b")}
        assert by_run["run_a"][0] == "run.started" and by_run["run_a"][-1] == "run.cancelled"
        assert by_run["run_b"] == ["run.cancelled"]  # never started
        assert all(e.data == {"reason": "cancel"} for e in entries if e.type == "run.cancelled")
        # multitask=interrupt: the running run is cut short for the new input
        resp = await http.post(
            "/v1/sessions/cx/invoke",
            json={"input": {"chunks": 100, "delay_ms": 100}, "mode": "detached"},
        )
        long_id = resp.json()["run_id"]
        resp = await http.post(
            "/v1/sessions/cx/invoke",
            json={"input": {"text": "now"}, "mode": "detached", "multitask": "interrupt"},
        )
        assert resp.status_code == 202, resp.text
        now_id = resp.json()["run_id"]
    await wait_for(_status(streams, sk, now_id, "completed"), 10, "the interrupting run")
    entries = await _entries(streams, sk)
    cut = [e for e in entries if e.run_id == long_id and e.type == "run.cancelled"]
    assert len(cut) == 1 and cut[0].data == {"reason": "interrupt"}
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))


async def test_a_mail_naming_a_queued_mode_skips_the_interrupt_look_and_one_naming_none_does_not(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """An input mailed mid-run with mode enqueue cannot cut the run short, so the owner does
    not read its inbox for it (the read after the run sees it); a mail naming no mode (an
    older API, a sweep) may be an interrupt, and an interrupt found that way still cuts."""
    api = fleet.start_api()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, sweep_interval_s=3600)
    replica = await _start(replicas, s, echo)
    streams, sk = Streams(redis_client), keys.session("default", "mx")
    await _submit(store, streams, sk, "run_a", '{"chunks": 100, "delay_ms": 50}')
    await wait_for(_status(streams, sk, "run_a", "started"), 10, "run_a")
    actor = replica.actors[sk.ref]
    looks: list[str] = []
    look = actor._interrupt_waiting

    async def counted(run: Any) -> bool:
        looks.append(run.run_id)
        return await look(run)

    actor._interrupt_waiting = counted  # type: ignore[method-assign]
    assert not actor._wake.is_set()  # (cleared before the read that found run_a)
    await store.enqueue(sk, "run_b", '{"text": "b"}')
    assert await store.notify_replica(
        "inproc", replica.incarnation, "input", sk.ref, multitask="enqueue"
    )
    await wait_for(actor._wake.is_set, 5, "the mail to be handled")
    await asyncio.sleep(0.05)  # (a look would have been started by the handling itself)
    assert looks == [] and not actor._may_interrupt
    assert await _status(streams, sk, "run_a", "started")()
    await store.enqueue(sk, "run_c", '{"text": "c"}', multitask="interrupt")
    assert await store.notify_replica("inproc", replica.incarnation, "input", sk.ref)
    await wait_for(_status(streams, sk, "run_c", "completed"), 10, "the interrupting run")
    assert looks[:1] == ["run_a"]
    entries = await _entries(streams, sk)
    cut = [e for e in entries if e.run_id == "run_a" and e.type == "run.cancelled"]
    assert len(cut) == 1 and cut[0].data == {"reason": "interrupt"}


async def test_stop_is_idempotent_and_leaves_nothing(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    keys: Keys,
    tmp_path: Path,
) -> None:
    s = settings_for(redis_server.url, "http://127.0.0.1:1", fleet, tmp_path)
    replica = await _start(replicas, s, echo)
    rk = keys.replica("inproc")
    assert await redis_client.exists(rk.lease)
    assert (tmp_path / "heartbeat").exists()
    await asyncio.gather(replica.stop(), replica.stop())
    await replica.stop()
    assert not await redis_client.exists(rk.lease)
    assert await redis_client.zscore(keys.replicas, "inproc") is None
    assert not (tmp_path / "heartbeat").exists()


async def test_the_owner_announces_a_start_only_for_an_input_whose_take_it_recorded(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """The owner publishes a StartNotice on the channel an input names (api/startfeed.py)
    when it starts its run, its take fenced by peekInbox; an input naming no channel gets
    none, nor does one a superseded owner peeks."""
    api = fleet.start_api()
    await _start(replicas, settings_for(redis_server.url, api.url, fleet, tmp_path), echo)
    streams, sk = Streams(redis_client), keys.session("default", "ann")
    channel = keys.starts_channel("test-api")
    async with _notices(redis_client, channel) as heard:
        await store.enqueue(sk, "run_quiet", "{}")  # names no channel
        await store.enqueue(sk, "run_loud", "{}", starts_to=channel)  # run after it
        await streams.publish_work(sk.ref, "invoke")
        await wait_for(_status(streams, sk, "run_loud", "completed"), 10, "both runs")
        token = (await store.ownership(sk)).token
        assert token is not None
        got = [StartNotice.parse(m["data"]) for m in await _messages(heard, 1)]
        assert got == [StartNotice(sk.ref, "run_loud", "inproc", token)]
    # a superseded owner's peek records no take: it would announce nothing
    await store.enqueue(sk, "run_late", "{}", starts_to=channel)
    state = SessionState()
    assert await next_input(store, streams, sk, state, token - 1, 0) is not None
    assert state.head_taken == ""
    nxt = await next_input(store, streams, sk, state, token, 0)
    assert nxt is not None and state.head_taken == nxt[0].id


async def test_a_function_handlers_first_input_is_announced_by_the_owners_first_peek(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """A function handler's activation is free and cannot fail, so the actor activates it as
    soon as the session is open, and the first peek of a new session publishes the start
    notice itself (as warm sessions' peeks do), not the owner after the peek's answer."""
    api = fleet.start_api()
    handler = Blocking()
    await _start(replicas, settings_for(redis_server.url, api.url, fleet, tmp_path), handler)
    streams, sk = Streams(redis_client), keys.session("default", "cold")
    channel = keys.starts_channel("test-api")
    async with _notices(redis_client, channel) as heard:
        queued = await store.enqueue(sk, "run_first", "{}", starts_to=channel)
        await streams.publish_work(sk.ref, "invoke")
        await asyncio.wait_for(handler.started.wait(), 10)
        actor = replicas[0].actors[sk.ref]
        assert actor.life.stateless and actor.life.active
        assert actor._state.head_announced == queued.entry_id  # published by the peek
        [notice] = [StartNotice.parse(m["data"]) for m in await _messages(heard, 1)]
        assert notice == StartNotice(sk.ref, "run_first", "inproc", actor.token)  # once


async def _messages(pubsub: Any, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The first ``n`` messages, and any that follow them within 0.2 s."""
    got: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < n and asyncio.get_running_loop().time() < deadline:
        m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if m is not None:
            got.append(m)
    await asyncio.sleep(0.2)
    while (m := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
        got.append(m)
    return got


async def test_a_cancel_mailed_before_its_run_starts_cancels_it_when_it_does(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """A start notice can answer "running" before the run is the actor's current one; a
    cancel mailed in that gap is kept and applied when the run starts (not left to the
    inbox sweep, which only reads the cancels set)."""
    gate = asyncio.Event()

    async def handler(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        if ctx.run_id == "run_a":
            await gate.wait()
        else:
            await asyncio.sleep(3600)  # until cancelled
        yield None

    api = fleet.start_api()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, sweep_interval_s=3600)
    replica = await _start(replicas, s, handler)
    streams, sk = Streams(redis_client), keys.session("default", "early")
    await store.enqueue(sk, "run_a", "{}")
    await store.enqueue(sk, "run_b", "{}")
    await streams.publish_work(sk.ref, "invoke")
    await wait_for(_status(streams, sk, "run_a", "started"), 10, "run_a to start")
    # the cancel mail for run_b arrives while run_a is the running one
    assert await store.notify_replica("inproc", replica.incarnation, "cancel", sk.ref, "run_b")
    await wait_for(lambda: replica.actors[sk.ref]._early_cancel == "run_b", 5, "the mail")
    gate.set()
    await wait_for(_status(streams, sk, "run_b", "cancelled"), 10, "run_b to be cancelled")
    by_run: dict[str, list[str]] = {}
    for e in await _entries(streams, sk):
        by_run.setdefault(e.run_id, []).append(e.type)
    assert by_run == {
        "run_a": ["run.started", "run.output", "run.completed"],
        "run_b": ["run.started", "run.cancelled"],
    }


async def test_an_input_announced_by_the_advance_still_runs_here_when_a_drain_lands(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """advanceInbox may publish the next input's start notice ("running, owner R token T");
    a drain landing before the actor runs it must not leave that answer wrong: the input
    runs here, under the token announced, then the actor leaves."""
    gate, handler = _gated("run_a")
    api = fleet.start_api()
    replica = await _start(
        replicas, settings_for(redis_server.url, api.url, fleet, tmp_path), handler
    )
    streams, sk = Streams(redis_client), keys.session("default", "drained")
    channel = keys.starts_channel("test-api")
    async with _notices(redis_client, channel) as heard:
        await store.enqueue(sk, "run_a", "{}")
        await store.enqueue(sk, "run_b", "{}", starts_to=channel)
        await streams.publish_work(sk.ref, "invoke")
        await wait_for(_status(streams, sk, "run_a", "started"), 10, "run_a to start")
        actor = replica.actors[sk.ref]
        assert actor.shipper is not None
        flush = actor.shipper.flush  # the advance rides on the run's last post

        async def advance_then_drain(*args: Any, **kw: Any) -> Any:
            got = await flush(*args, **kw)
            assert got is not None and kw.get("advance")  # the ingest advanced the inbox
            actor.drain()  # lands while the advance's reply is on its way
            return got

        monkeypatch.setattr(actor.shipper, "flush", advance_then_drain)
        gate.set()
        await wait_for(_status(streams, sk, "run_b", "completed"), 10, "run_b")
        [notice] = [StartNotice.parse(m["data"]) for m in await _messages(heard, 1)]
    started = [e for e in await _entries(streams, sk) if e.type == "run.started"]
    assert [(e.run_id, e.token) for e in started] == [("run_a", 1), ("run_b", 1)]
    assert notice == StartNotice(sk.ref, "run_b", "inproc", 1)  # the answer was right
    await wait_for(_not_held(store, sk), 10, "the drained actor to release")


async def test_an_owner_paused_past_its_deadline_after_a_take_does_not_run_the_input(
    replicas: list[Replica],
    own_redis: OwnRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chaos case of a SIGSTOP between an owner's take and its handler: on resume, the
    run task can get the loop before the fence timer. The handler must not run under the
    old lease (a newer owner may be running the input); the new incarnation runs it."""
    server, fleet, client = own_redis.server, own_redis.fleet, own_redis.client
    calls: list[tuple[str, int]] = []

    async def handler(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        calls.append((ctx.run_id, ctx.token))
        yield {"ok": True}

    real_parse = offloop.parse_input
    paused: list[bool] = []

    async def parse_after_a_pause(raw: Any) -> Any:
        if not paused:  # the whole process stops; Redis too, so no renewal lands meanwhile
            paused.append(True)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(1.5)  # noqa: ASYNC251 - the loop itself frozen past the 1 s TTL
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        return await real_parse(raw)

    monkeypatch.setattr("streamward.runner.actor.parse_input", parse_after_a_pause)
    s = settings_for(server.url, own_redis.api_url, fleet, tmp_path, replica_ttl_ms=1000)
    replica = await _start(replicas, s, handler)
    incarnation = replica.incarnation
    store, streams, sk = LeaseStore(client), Streams(client), Keys().session("default", "p")
    await _submit(store, streams, sk, "run_p", "{}")
    await wait_for(_status(streams, sk, "run_p", "completed"), 20, "run_p on a new owner")
    assert paused and replica.incarnation != incarnation
    # only the new owner ran it: never under token 1, the lease the pause outlived
    assert calls == [("run_p", 2)]
    started = [e for e in await _entries(streams, sk) if e.type == "run.started"]
    assert [e.token for e in started] == [2]


async def test_a_drain_landing_before_the_last_post_records_no_take_of_the_next_input(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's last post would consume its input and take the next (ingestAdvance); a
    leaving actor must take nothing it will not run, or the next owner would count one
    owner too many towards the poison limit."""
    gate, handler = _gated("run_a")
    api = fleet.start_api()
    replica = await _start(
        replicas, settings_for(redis_server.url, api.url, fleet, tmp_path), handler
    )
    streams, sk = Streams(redis_client), keys.session("default", "leaving")
    await store.enqueue(sk, "run_a", "{}")
    b = await store.enqueue(sk, "run_b", "{}")
    await streams.publish_work(sk.ref, "invoke")
    await wait_for(_status(streams, sk, "run_a", "started"), 10, "run_a to start")
    actor = replica.actors[sk.ref]
    assert actor.shipper is not None
    flush = actor.shipper.flush
    asked: list[bool] = []

    async def drain_then_flush(*args: Any, **kw: Any) -> Any:
        if kw.get("advance"):
            actor.drain()  # lands while the run's last entries wait to be posted
            asked.append(True)
        return await flush(*args, **kw)

    monkeypatch.setattr(actor.shipper, "flush", drain_then_flush)
    gate.set()
    await wait_for(_status(streams, sk, "run_b", "completed"), 15, "run_b, on a new lease")
    started = [e for e in await _entries(streams, sk) if e.type == "run.started"]
    assert asked and [(e.run_id, e.token) for e in started] == [("run_a", 1), ("run_b", 2)]
    # run_b's take was recorded by its runner alone: one owner
    assert (await redis_client.hget(sk.meta, "head_taken")) == f"{b.entry_id}|2|1"
