"""The runner's loop objects and shared rules, built directly from their collaborators."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis

from streamward.lua.inbox import InboxItem
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner import intake
from streamward.runner.actor import SessionActor
from streamward.runner.admission import IdleSlot
from streamward.runner.config import RunnerSettings
from streamward.runner.context import RunContext
from streamward.runner.inbox import interrupt_waiting
from streamward.runner.intake import WorkIntake
from streamward.runner.lifecycle import Activation, Session, host_factory
from streamward.runner.metrics import Metrics
from streamward.runner.sessions import SessionBook
from streamward.runner.state import ReplicaState
from streamward.tools.server import RedisServer


async def _never(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    raise AssertionError("no run is expected here")
    yield


def _book(client: aioredis.Redis, state: ReplicaState, http: httpx.AsyncClient) -> SessionBook:
    keys = Keys()
    settings = RunnerSettings(replica_id=state.replica_id, max_sessions=1)
    store, streams = LeaseStore(client, keys), Streams(client, keys)
    return SessionBook(state, settings, keys, store, streams, http, Metrics(), _never)


def _item(id: str, multitask: str = "enqueue") -> InboxItem:
    return InboxItem(id=id, run_id=f"run-{id}", input=None, multitask=multitask, source="api",
                     enqueued_ms=0)  # fmt: skip


def test_an_interrupting_input_is_any_other_than_the_head() -> None:
    head, queued = _item("1-0"), _item("2-0")
    assert not interrupt_waiting([head, queued], head.id)
    assert interrupt_waiting([head, queued, _item("3-0", "interrupt")], head.id)
    # the head itself asked to interrupt: it is the one running, nothing waits behind it
    assert not interrupt_waiting([_item("1-0", "interrupt"), queued], "1-0")


def test_only_a_function_handlers_activation_counts_as_stateless() -> None:
    """The actor activates a stateless (function) host as soon as the session opens; a class
    host, even one with an attribute of that name, still activates just before its first
    run (its activate hook may read, write and fail)."""

    async def fn(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        yield input

    class Named(Session):
        stateless = True  # a user's own attribute: not our marker

    def activation(spec: Any) -> Activation:
        return Activation(
            host_factory(spec), store=cast(Any, None), streams=cast(Any, None),
            session=Keys().session("p", "s"), owner=("r1", "i1", 1),
            replica_can_write=lambda: True, state_max_bytes=1, passivate_timeout_s=1.0,
            activation_max_failures=1, input_max_bytes=1, taken_over=False,
        )  # fmt: skip

    assert activation(fn).stateless
    assert not activation(Named).stateless and not activation(Session).stateless


async def test_work_is_handed_back_when_draining_fenced_late_or_full(
    redis_client: aioredis.Redis,
) -> None:
    loop = asyncio.get_running_loop()
    state = ReplicaState("r1", incarnation="i1", fenced=False, deadline=loop.time() + 60)
    async with httpx.AsyncClient() as http:
        book = _book(redis_client, state, http)
        assert not book.hands_back()
        state.deadline = loop.time() - 1  # past the self-fencing deadline, timer not yet fired
        assert book.hands_back()
        state.deadline = loop.time() + 60
        state.fenced = True
        assert book.hands_back()
        state.fenced = False
        state.begin_drain()
        assert book.hands_back()
        state.draining = False
        state.note_writes(False)  # Redis answers but refuses writes (OOM)
        assert book.hands_back()
        state.note_writes(True)
        actor = SimpleNamespace(ref="p/s", closing=False, idle=IdleSlot(asyncio.Event()))
        book.actors["p/s"] = cast(SessionActor, actor)
        assert book.hands_back()  # max_sessions=1 busy session reached
        actor.idle.since = loop.time()  # idle: admitting work evicts it
        assert not book.hands_back()


async def test_a_readonly_work_read_backs_off_like_any_outage(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replica answers XREADGROUP with READONLY (a Sentinel failover under way): the
    backoff grows with every failure in a row and the warning is rate-limited."""
    failures = 25
    state = ReplicaState("r1", incarnation="i1", fenced=False)
    attempts: list[int] = []

    def backoff_s(attempt: int) -> float:
        attempts.append(attempt)
        if len(attempts) == failures:
            state.draining = True  # ends the loop after this failure
        return 0.0

    monkeypatch.setattr(intake, "backoff_s", backoff_s)
    with RedisServer() as replica_server:
        client = aioredis.Redis.from_url(replica_server.url, decode_responses=True)
        try:
            await client.replicaof("127.0.0.1", redis_server.port)
            async with httpx.AsyncClient() as http:
                book = _book(client, state, http)
                with caplog.at_level(logging.WARNING, logger="streamward.runner.intake"):
                    await asyncio.wait_for(WorkIntake(state, book.streams, book).run(), 30)
        finally:
            await client.aclose()
    assert attempts == list(range(1, failures + 1))
    warned = [r.getMessage() for r in caplog.records if "work read failed" in r.getMessage()]
    assert len(warned) == 2  # the 1st and the 20th failure in a row
    assert all("ReadOnlyError" in w for w in warned)


class _SlowBook:
    """A SessionBook stand-in: each claim waits until every claim has started (so a serial
    take_all would never get past the first), and one session's claim fails unexpectedly."""

    def __init__(self, n: int, failing: str) -> None:
        self.n, self.failing = n, failing
        self.started: list[str] = []
        self.all_started = asyncio.Event()

    async def claim(self, ref: str, reason: str) -> None:
        self.started.append(ref)
        if len(self.started) == self.n:
            self.all_started.set()
        await self.all_started.wait()
        if ref == self.failing:
            raise RuntimeError("unexpected")


async def test_one_reads_work_entries_are_claimed_together_and_all_acknowledged(
    redis_client: aioredis.Redis,
) -> None:
    """A cold burst: the claims of one read run concurrently (their Redis calls then share
    round trips); an unexpected error in one is raised only after the others were taken."""
    keys = Keys()
    streams = Streams(redis_client, keys)
    await streams.ensure_work_group()
    refs = [f"p/s{i}" for i in range(5)]
    for ref in refs:
        await streams.publish_work(ref, "new")
    items = await streams.read_work("r1", 10, 100)
    assert [i.session_ref for i in items] == refs
    book = _SlowBook(len(items), failing="p/s2")
    with pytest.raises(RuntimeError, match="unexpected"):
        await asyncio.wait_for(intake.take_all(cast(SessionBook, book), streams, items), 10)
    assert sorted(book.started) == refs
    # every claim that ended was acknowledged; the failed one stays pending for XAUTOCLAIM
    assert await streams.work_backlog() == 1
