"""Auto-pipelining (lua/autopipe.py): a loop turn's script calls leave as one pipeline, and each
caller still gets exactly its own answer — against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from streamward.lua import autopipe
from streamward.lua.client import StreamwardCluster
from streamward.lua.errors import StaleToken
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.server import RedisServer, free_port
from tests.lua.helpers import hold, inbox_runs


@pytest.fixture
async def piped(redis_client: aioredis.Redis) -> AsyncIterator[autopipe.AutoPipeline]:
    ap = autopipe.enable(redis_client)
    assert ap is not None
    try:
        yield ap
    finally:
        await ap.stop()
        autopipe.disable(redis_client)


async def test_calls_of_one_turn_leave_as_one_pipeline_each_with_its_own_reply(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sessions = [keys.session("p", f"s{i}") for i in range(20)]
    queued = await asyncio.gather(
        *(store.enqueue(sk, f"run_{i}", str(i)) for i, sk in enumerate(sessions))
    )
    assert (piped.batches, piped.units) == (1, 20)
    assert [q.run_id for q in queued] == [f"run_{i}" for i in range(20)]
    for i, sk in enumerate(sessions):  # each append landed in its own session, once
        assert await inbox_runs(redis_client, sk.inbox) == [f"run_{i}"]
    # awaited one after another, each call is a batch of its own
    await store.peek_inbox(sessions[0], 1)
    await store.peek_inbox(sessions[1], 1)
    assert (piped.batches, piped.units) == (3, 22)


async def test_a_turns_calls_are_written_in_the_next_turn_not_later(
    store: LeaseStore,
    redis_client: aioredis.Redis,
    keys: Keys,
    piped: autopipe.AutoPipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch waits for the calls of the turn it was started in, and no longer: the task
    that takes the units writes them (one hop through the loop, not a callback and then a
    task: on a busy loop each hop is the whole rest of a turn)."""
    loop = asyncio.get_running_loop()
    turn = 0
    ticking = True

    def tick() -> None:  # counts the loop's turns
        nonlocal turn
        turn += 1
        if ticking:
            loop.call_soon(tick)

    written: list[int] = []
    pipeline = redis_client.pipeline

    def counted(*args: object, **kwargs: object) -> object:
        written.append(turn)  # the batch's pipeline is built and written in this turn
        return pipeline(*args, **kwargs)  # type: ignore[arg-type]

    await store.scripts.load_all(redis_client)  # (a NOSCRIPT would send a second batch)
    monkeypatch.setattr(redis_client, "pipeline", counted)
    sessions = [keys.session("p", f"t{i}") for i in range(3)]
    loop.call_soon(tick)
    await asyncio.sleep(0)  # (the tick now runs in every turn)
    calls = [asyncio.ensure_future(store.peek_inbox(sk, 1)) for sk in sessions]
    await asyncio.sleep(0)  # the calls start in this turn: their units are queued
    started = turn
    await asyncio.gather(*calls)
    ticking = False
    assert written == [started + 1]  # one batch, written in the very next turn


async def test_a_batch_cancelled_before_it_leaves_ends_its_calls_instead_of_hanging(
    store: LeaseStore, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    call = asyncio.ensure_future(store.peek_inbox(keys.session("p", "c"), 1))
    await asyncio.sleep(0)  # the call's unit is queued, its batch's task not yet run
    flushing = piped._flushing
    assert flushing is not None
    flushing.cancel()  # (the loop shutting down under it)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)  # not a TimeoutError: the caller is told
    assert piped._flushing is None and not piped._units


async def test_a_refused_call_fails_alone_in_its_batch(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sk = keys.session("p", "s1")
    # loaded, so none is resent: a resent call runs after the rest of its batch
    await store.scripts.load_all(redis_client)
    lease = await hold(store, sk)
    q1 = await store.enqueue(sk, "run_1", "1")
    q2 = await store.enqueue(sk, "run_2", "2")
    assert q1.entry_id and q2.entry_id
    batches = piped.batches
    stale, ok, peek = await asyncio.gather(
        store.complete_input(sk, lease.token - 1, q1.entry_id),  # an older owner: fenced
        store.complete_input(sk, lease.token, q1.entry_id),
        store.peek_inbox(sk, 5),
        return_exceptions=True,
    )
    assert piped.batches == batches + 1
    assert isinstance(stale, StaleToken)
    assert ok == 1  # run_2 left
    assert not isinstance(peek, BaseException) and [m.run_id for m in peek.metas] == ["run_2"]


async def test_a_lost_script_cache_resends_only_what_did_not_run(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sk = keys.session("p", "s1")
    await hold(store, sk)
    await store.enqueue(sk, "run_0", "0", predict_mail=True)  # the holder is remembered
    await redis_client.script_flush()  # a Redis restart or failover loses the script cache
    # plain calls and a predicted mail's pipeline, all in one batch, none of them loaded
    others = [keys.session("p", f"o{i}") for i in range(5)]
    await asyncio.gather(
        store.enqueue(sk, "run_1", "1", predict_mail=True),
        *(store.enqueue(o, f"run_o{i}", str(i)) for i, o in enumerate(others)),
    )
    assert await inbox_runs(redis_client, sk.inbox) == ["run_0", "run_1"]
    for i, o in enumerate(others):
        assert await inbox_runs(redis_client, o.inbox) == [f"run_o{i}"]
    # (the append loaded but not the mail's script: tests/lua/test_predicted_mail.py, which
    # runs with auto-pipelining too)


async def test_a_call_cancelled_before_its_batch_leaves_is_not_sent(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sk = keys.session("p", "s1")
    task = asyncio.create_task(store.enqueue(sk, "run_1", "1"))
    await asyncio.sleep(0)  # the call is queued for the end of the turn
    task.cancel()
    kept = await store.enqueue(keys.session("p", "s2"), "run_2", "2")
    assert kept.entry_id
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await inbox_runs(redis_client, sk.inbox) == []


async def test_a_connection_error_reaches_every_caller_of_the_batch(keys: Keys) -> None:
    # nothing listens on this port: every call of the batch fails, none hangs
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=1.0, decode_responses=True)
    autopipe.enable(client)
    try:
        store = LeaseStore(client, keys)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(store.peek_inbox(keys.session("p", f"s{i}"), 1) for i in range(3)),
                return_exceptions=True,
            ),
            10,
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        autopipe.disable(client)
        await client.aclose()


async def test_the_batch_survives_a_redis_restart_for_the_next_calls(keys: Keys) -> None:
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        ap = autopipe.enable(client)
        assert ap is not None
        try:
            store = LeaseStore(client, keys)
            await store.enqueue(keys.session("p", "s1"), "run_1", "1")
            server.restart()  # the connection drops and the script cache is gone
            with pytest.raises(RedisConnectionError):
                await store.enqueue(keys.session("p", "s1"), "run_2", "2")
            again = await store.enqueue(keys.session("p", "s1"), "run_3", "3")
            assert again.entry_id  # reconnected, the script loaded again on NOSCRIPT
        finally:
            await ap.stop()
            await client.aclose()


def test_cluster_clients_are_not_batched() -> None:
    cluster = StreamwardCluster(host="127.0.0.1", port=free_port())
    assert autopipe.enable(cluster) is None
    assert autopipe.for_client(cluster) is None


async def test_plain_commands_join_the_batch_and_keep_their_own_errors(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sk, broken = keys.session("p", "s1"), keys.session("p", "s2")
    await redis_client.set(broken.meta, "not a hash")  # HGET on it is a WRONGTYPE error
    streams = Streams(redis_client, keys)
    batches = piped.batches
    queued, types, refused = await asyncio.gather(
        store.enqueue(sk, "run_1", "1"),
        streams.session_types([sk.ref]),
        streams.session_types([broken.ref]),
        return_exceptions=True,
    )
    assert piped.batches == batches + 1
    assert not isinstance(queued, BaseException) and queued.entry_id
    assert types == {sk.ref: "default"}
    assert isinstance(refused, ResponseError) and "WRONGTYPE" in str(refused)


async def test_only_the_calls_that_hit_noscript_are_resent_and_a_cancelled_one_is_not(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    """One batch: an enqueue whose script is loaded (it runs once) beside a peek whose script
    is not (resent); then a caller that gives up after its batch left is never resent."""
    sk, other = keys.session("p", "s1"), keys.session("p", "s2")
    await redis_client.script_flush()
    await redis_client.script_load(store.scripts.script("enqueueInput").src.source)
    queued, peek = await asyncio.gather(store.enqueue(sk, "run_1", "1"), store.peek_inbox(sk, 5))
    assert queued.entry_id
    assert await inbox_runs(redis_client, sk.inbox) == ["run_1"]  # appended once
    assert [m.run_id for m in peek.metas] == ["run_1"]  # the peek ran after, resent

    await redis_client.script_flush()  # nothing loaded: this enqueue will hit NOSCRIPT
    loaded = asyncio.Event()
    original = store.scripts.script("enqueueInput").load

    async def slow_load(client: object) -> None:
        loaded.set()  # the batch left and came back NOSCRIPT: the caller now gives up
        await asyncio.sleep(0.2)
        await original(client)  # type: ignore[arg-type]

    store.scripts.script("enqueueInput").load = slow_load  # type: ignore[method-assign]
    task = asyncio.create_task(store.enqueue(other, "run_2", "2"))
    await asyncio.wait_for(loaded.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await piped.stop()  # the resend would have happened by now
    assert await inbox_runs(redis_client, other.inbox) == []


async def test_a_call_the_client_refuses_fails_alone(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys, piped: autopipe.AutoPipeline
) -> None:
    sk = keys.session("p", "s1")

    def unqueueable(pipe: object) -> list[autopipe.Loadable]:
        raise ValueError("this caller's own mistake")

    bad_value, wrong_keys, queued = await asyncio.gather(
        autopipe.execute(redis_client, lambda p: p.set("k", None)),  # refused while encoding
        piped.submit(unqueueable),  # fails while the batch is built
        store.enqueue(sk, "run_1", "1"),
        return_exceptions=True,
    )
    assert isinstance(bad_value, DataError)
    assert isinstance(wrong_keys, ValueError)
    assert not isinstance(queued, BaseException) and queued.entry_id
    assert await inbox_runs(redis_client, sk.inbox) == ["run_1"]
