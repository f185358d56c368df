"""ingestEntries-5 (fenced transcript), ingestAdvance-7, enqueueInput-5, completeInput-3 and
advanceInbox-5 (inbox), notifyReplica-2 (owner mail)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import NotOwner, SeqGap, SessionBusy, StaleToken
from streamward.lua.inboxscripts import peek_from_wire
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import InboxPeek
from streamward.lua.store import Entry, LeaseStore
from streamward.lua.streams import Streams
from streamward.lua.work import StartNotice
from tests.lua.helpers import LEASE_TTL_MS, entries, log_entries, log_ids, snapshot

# -- ingestEntries-5 ---------------------------------------------------------------------


async def test_ingest_with_current_token_writes_entries_with_seq_ids(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    out = await store.ingest(
        session,
        "run_a",
        lease.token,
        [
            Entry(1, "run.started", {"replica_id": "r1", "attempt": 1}),
            Entry(2, "run.output", {"text": "hi"}, ts_ms=1234),
        ],
    )
    assert (out.accepted, out.duplicates, out.last_seq) == (2, 0, 2)
    assert await log_ids(redis_client, session) == ["1-0", "2-0"]
    stored = await log_entries(redis_client, session)
    assert stored[0]["type"] == "run.started" and stored[1]["type"] == "run.output"
    assert {e["run_id"] for e in stored} == {"run_a"}
    assert {e["token"] for e in stored} == {str(lease.token)}
    assert [e["seq"] for e in stored] == ["1", "2"]
    assert orjson.loads(stored[1]["data"]) == {"text": "hi"}
    assert stored[1]["ts"] == "1234"
    sec, _ = await redis_client.time()
    assert abs(int(stored[0]["ts"]) - sec * 1000) < 5_000  # "" ts = Redis TIME
    meta = await redis_client.hgetall(session.meta)
    assert meta["last_seq"] == "2"
    # the read side parses what ingest wrote
    log = await Streams(redis_client).read_log(session)
    assert [(e.seq, e.type, e.token) for e in log] == [
        (1, "run.started", lease.token),
        (2, "run.output", lease.token),
    ]


async def test_ingest_maintains_runs_hash_and_active_run_id(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    streams = Streams(redis_client)
    started = {"replica_id": "r1", "attempt": 2, "input": {"x": 1}}
    await store.ingest(session, "run_a", lease.token, [Entry(1, "run.started", started)])
    assert (await redis_client.hgetall(session.meta))["active_run_id"] == "run_a"
    state = await streams.run_state(session, "run_a")
    assert state is not None
    assert (state.status, state.token, state.replica_id, state.attempt) == (
        "started",
        lease.token,
        "r1",
        2,
    )
    assert state.started_id == state.last_id == "1-0"

    await store.ingest(session, "run_a", lease.token, entries([2, 3]))  # outputs: no run change
    state = await streams.run_state(session, "run_a")
    assert state is not None and state.status == "started" and state.last_id == "1-0"

    # a terminal entry of another run does not clear the active run
    await store.ingest(session, "run_b", lease.token, [Entry(4, "run.cancelled", {})])
    assert (await redis_client.hgetall(session.meta))["active_run_id"] == "run_a"
    b = await streams.run_state(session, "run_b")
    assert b is not None and b.status == "cancelled" and b.started_id is None

    await store.ingest(session, "run_a", lease.token, [Entry(5, "run.completed", {"outputs": 2})])
    assert "active_run_id" not in await redis_client.hgetall(session.meta)
    state = await streams.run_state(session, "run_a")
    assert state is not None
    assert (state.status, state.started_id, state.last_id) == ("completed", "1-0", "5-0")
    assert state.attempt == 2  # kept from run.started


@pytest.mark.parametrize("terminal", ["run.failed", "run.cancelled", "run.interrupted"])
async def test_ingest_terminal_or_interrupted_clears_active_run(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, terminal: str
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", lease.token, [Entry(1, "run.started", {})])
    await store.ingest(session, "run_a", lease.token, [Entry(2, terminal, {})])
    assert "active_run_id" not in await redis_client.hgetall(session.meta)
    state = await Streams(redis_client).run_state(session, "run_a")
    assert state is not None and state.status == terminal.removeprefix("run.")


async def test_ingest_duplicates_are_counted_not_errors(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", lease.token, entries([1, 2, 3]))
    out = await store.ingest(session, "run_a", lease.token, entries([2, 3, 4, 4, 5]))
    assert (out.accepted, out.duplicates, out.last_seq) == (2, 3, 5)
    assert await log_ids(redis_client, session) == [f"{i}-0" for i in range(1, 6)]
    # the stored entry of a duplicate seq is the first one written
    stored = await log_entries(redis_client, session)
    assert orjson.loads(stored[1]["data"]) == {"seq": 2}


async def test_replaying_a_batch_changes_nothing(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    batch = [
        Entry(1, "run.started", {"replica_id": "r1", "attempt": 1}),
        Entry(2, "run.output", {"n": 1}),
        Entry(3, "run.completed", {"outputs": 1}),
    ]
    first = await store.ingest(session, "run_a", lease.token, batch)
    assert (first.accepted, first.duplicates) == (3, 0)
    before = await snapshot(redis_client, session)
    again = await store.ingest(session, "run_a", lease.token, batch)
    assert (again.accepted, again.duplicates, again.last_seq) == (0, 3, 3)
    assert await snapshot(redis_client, session) == before


@pytest.mark.parametrize(
    ("seqs", "gap_at"),
    [([5], 5), ([4, 6], 6), ([4, 5, 7], 7), ([3, 5], 5)],
    ids=["skip-ahead", "gap-after-one", "gap-at-end", "dup-then-gap"],
)
async def test_ingest_gap_refuses_whole_batch_and_writes_nothing(
    store: LeaseStore,
    redis_client: aioredis.Redis,
    session: SessionKeys,
    seqs: list[int],
    gap_at: int,
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", lease.token, [Entry(1, "run.started", {})])
    await store.ingest(session, "run_a", lease.token, entries([2, 3]))
    before = await snapshot(redis_client, session)
    with pytest.raises(SeqGap) as exc:
        await store.ingest(session, "run_b", lease.token, entries(seqs, etype="run.started"))
    assert (exc.value.last_seq, exc.value.seq) == (3, gap_at)
    assert await snapshot(redis_client, session) == before


async def test_ingest_into_empty_log_must_start_at_one(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    with pytest.raises(SeqGap) as exc:
        await store.ingest(session, "run_a", lease.token, entries([2]))
    assert (exc.value.last_seq, exc.value.seq) == (0, 2)
    assert await redis_client.exists(session.log) == 0


async def test_ingest_empty_batch_is_a_no_op(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", lease.token, entries([1]))
    out = await store.ingest(session, "run_a", lease.token, [])
    assert (out.accepted, out.duplicates, out.last_seq) == (0, 0, 1)


@pytest.mark.parametrize("delta", [-1, 1], ids=["older", "newer"])
async def test_ingest_with_token_other_than_epoch_is_stale(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys, delta: int
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", lease.token, entries([1]))
    await store.release(session, "r1", "inc-1", lease.token)
    second = await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
    before = await snapshot(redis_client, session)
    with pytest.raises(StaleToken) as exc:
        await store.ingest(session, "run_a", second.token + delta, entries([2]))
    assert (exc.value.token, exc.value.epoch) == (second.token + delta, second.token)
    assert await snapshot(redis_client, session) == before


async def test_ingest_into_never_acquired_session_is_refused(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """Tokens are minted from 1: token 0 must not match the epoch of a fresh session."""
    with pytest.raises(StaleToken) as exc:
        await store.ingest(session, "run_a", 0, entries([1]))
    assert exc.value.epoch == 0
    assert await redis_client.exists(session.log, session.meta, session.runs) == 0


# -- stale token after takeover / force-release -------------------------------------------


async def test_stale_token_after_takeover_is_refused_and_writes_nothing(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", old.token, [Entry(1, "run.started", {})])
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "inc-1", LEASE_TTL_MS)
    before = await snapshot(redis_client, session)
    # the paused former owner wakes up and tries to write the next entries
    with pytest.raises(StaleToken) as exc:
        await store.ingest(session, "run_a", old.token, entries([2, 3]))
    assert (exc.value.token, exc.value.epoch) == (old.token, new.token)
    # ... or to replay what it already wrote: refused too, not counted as duplicates
    with pytest.raises(StaleToken):
        await store.ingest(session, "run_a", old.token, [Entry(1, "run.started", {})])
    assert await snapshot(redis_client, session) == before
    # the new owner continues the same seq
    out = await store.ingest(session, "run_a", new.token, [Entry(2, "run.interrupted", {})])
    assert (out.accepted, out.last_seq) == (1, 2)
    assert [e["token"] for e in await log_entries(redis_client, session)] == [
        str(old.token),
        str(new.token),
    ]


async def test_a_repeated_token_is_told_apart_by_the_lease_owner(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """An async Redis failover lost r1's acquisition and its epoch INCR: r2 then got the same
    token number. With its identity, r1's write is refused; r2's goes through."""
    lost = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    # what the promoted replica never saw: the lease and the INCR
    await redis_client.delete(session.lease)
    await redis_client.decr(session.epoch)
    won = await store.acquire(session, "r2", "inc-9", LEASE_TTL_MS)
    assert won.token == lost.token  # the repeat
    before = await snapshot(redis_client, session)
    with pytest.raises(NotOwner):
        await store.ingest(
            session, "run_a", lost.token, entries([1]), replica_id="r1", incarnation="inc-1"
        )
    assert await snapshot(redis_client, session) == before
    out = await store.ingest(
        session, "run_b", won.token, entries([1]), replica_id="r2", incarnation="inc-9"
    )
    assert out.accepted == 1
    # without an identity only the token is checked (an HTTP-only runner's choice)
    assert (await store.ingest(session, "run_b", won.token, entries([2]))).accepted == 1
    # a released lease names nobody: an identified write is refused
    await redis_client.delete(session.lease)
    with pytest.raises(NotOwner):
        await store.ingest(
            session, "run_b", won.token, entries([3]), replica_id="r2", incarnation="inc-9"
        )


async def test_stale_token_after_force_release_is_refused_and_writes_nothing(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_a", old.token, entries([1]))
    forced = await store.force_release(session, "break-glass")
    before = await snapshot(redis_client, session)
    with pytest.raises(StaleToken) as exc:
        await store.ingest(session, "run_a", old.token, entries([2]))
    assert (exc.value.token, exc.value.epoch) == (old.token, forced.new_epoch)
    assert await snapshot(redis_client, session) == before
    # still refused once a new owner exists
    new = await store.acquire(session, "r2", "inc-1", LEASE_TTL_MS)
    with pytest.raises(StaleToken):
        await store.ingest(session, "run_a", old.token, entries([2]))
    assert (await store.ingest(session, "run_b", new.token, entries([2]))).accepted == 1


# -- enqueueInput-5 ----------------------------------------------------------------------


async def test_enqueue_appends_and_creates_meta(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    first = await store.enqueue(session, "run_1", '{"q": 1}', source="event:gh")
    assert not first.duplicate and first.run_id == "run_1"
    assert (first.active_run_id, first.pending) == ("", 1)
    second = await store.enqueue(session, "run_2", '{"q": 2}')
    assert second.pending == 2
    assert first.entry_id is not None and second.entry_id is not None
    items = await Streams(redis_client).read_inbox(session)
    assert [(i.id, i.run_id, i.input, i.source, i.multitask) for i in items] == [
        (first.entry_id, "run_1", {"q": 1}, "event:gh", "enqueue"),
        (second.entry_id, "run_2", {"q": 2}, "invoke", "enqueue"),
    ]
    meta = await redis_client.hgetall(session.meta)
    assert (meta["project"], meta["session_id"], meta["status"]) == ("proj", "sess-1", "active")
    assert int(meta["created_ms"]) <= int(meta["updated_ms"])


async def test_enqueue_keeps_a_trace_context_only_when_given(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = await store.enqueue(session, "run_1", "{}", traceparent=tp)
    plain = await store.enqueue(session, "run_2", "{}")
    c: Any = redis_client
    raw: dict[str, Any] = {str(i): f for i, f in await c.xrange(session.inbox)}
    assert raw[str(traced.entry_id)]["trace"] == tp
    assert "trace" not in raw[str(plain.entry_id)]  # an entry as it was before tracing
    items = await Streams(redis_client).read_inbox(session)
    assert [i.traceparent for i in items] == [tp, ""]
    head = (await store.peek_inbox(session, 10)).head  # what the owner reads
    assert head is not None and head.parse().traceparent == tp


async def test_enqueue_keeps_the_waiting_apis_channel_only_when_given(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """``starts_to`` (the channel a detached invoke hears its start on), alone or with a
    trace context; an entry without one is as before."""
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ch = store.keys.starts_channel("api1")
    both = await store.enqueue(session, "run_1", "{}", traceparent=tp, starts_to=ch)
    alone = await store.enqueue(session, "run_2", "{}", starts_to=ch)
    plain = await store.enqueue(session, "run_3", "{}")
    c: Any = redis_client
    raw: dict[str, Any] = {str(i): f for i, f in await c.xrange(session.inbox)}
    assert raw[str(both.entry_id)]["trace"] == tp and raw[str(both.entry_id)]["starts_to"] == ch
    assert raw[str(alone.entry_id)]["starts_to"] == ch and "trace" not in raw[str(alone.entry_id)]
    assert "starts_to" not in raw[str(plain.entry_id)]
    items = await Streams(redis_client).read_inbox(session)
    assert [(i.starts_to, i.traceparent) for i in items] == [(ch, tp), (ch, ""), ("", "")]
    head = (await store.peek_inbox(session, 10)).head  # what the owner reads
    assert head is not None and head.parse().starts_to == ch


async def test_enqueue_reports_active_run(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_0", lease.token, [Entry(1, "run.started", {})])
    out = await store.enqueue(session, "run_1", "{}")
    assert (out.active_run_id, out.pending) == ("run_0", 1)


async def test_enqueue_idempotency_key_returns_first_run(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    first = await store.enqueue(
        session, "run_1", "{}", idempotency_key="k1", idempotency_ttl_ms=9000
    )
    dup = await store.enqueue(session, "run_2", '{"other": 1}', idempotency_key="k1")
    assert dup.duplicate and dup.run_id == "run_1" and dup.entry_id is None
    assert await redis_client.xlen(session.inbox) == 1
    idem = session.idempotency("k1")
    assert await redis_client.get(idem) == "run_1"
    assert 0 < await redis_client.pttl(idem) <= 9000
    other = await store.enqueue(session, "run_3", "{}", idempotency_key="k2")
    assert not other.duplicate and other.pending == 2
    # without a key nothing is deduplicated and no idempotency key is written
    await store.enqueue(session, "run_4", "{}")
    await store.enqueue(session, "run_4", "{}")
    assert await redis_client.xlen(session.inbox) == 4
    assert await redis_client.exists(session.idempotency("-")) == 0
    assert first.run_id == "run_1"


async def test_enqueue_reject_when_busy_raises_session_busy(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    ok = await store.enqueue(session, "run_1", "{}", multitask="reject")  # idle: accepted
    assert ok.pending == 1
    with pytest.raises(SessionBusy) as exc:
        await store.enqueue(session, "run_2", "{}", multitask="reject", idempotency_key="k")
    assert (exc.value.active_run_id, exc.value.pending) == ("", 1)
    assert await redis_client.xlen(session.inbox) == 1
    assert await redis_client.exists(session.idempotency("k")) == 0  # rejected: no key kept

    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_1", lease.token, [Entry(1, "run.started", {})])
    await store.complete_input(session, lease.token, ok.entry_id or "")
    with pytest.raises(SessionBusy) as exc:  # inbox empty but a run is active
        await store.enqueue(session, "run_2", "{}", multitask="reject")
    assert (exc.value.active_run_id, exc.value.pending) == ("run_1", 0)
    # other modes still queue behind the active run
    assert (await store.enqueue(session, "run_2", "{}", multitask="enqueue")).pending == 1


async def test_enqueue_reads_log_end_and_lease_holder(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    first = await store.enqueue(session, "run_1", "{}", idempotency_key="k")
    assert (first.log_last_id, first.holder) == ("0-0", None)
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(
        session, "run_1", lease.token, [Entry(1, "run.started", {}), Entry(2, "run.output", {})]
    )
    second = await store.enqueue(session, "run_2", "{}")
    assert (second.log_last_id, second.holder) == ("2-0", ("r1", "inc-1"))
    dup = await store.enqueue(session, "run_3", "{}", idempotency_key="k")
    assert dup.duplicate and (dup.run_id, dup.log_last_id) == ("run_1", "2-0")


async def test_notify_replica_mails_only_a_live_incarnation(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    streams = Streams(redis_client, store.keys)
    assert not await store.notify_replica("r1", "inc-1", "input", session.ref)  # no lease
    assert not await redis_client.exists(store.keys.replica("r1").mail)  # nothing written
    await store.register_replica("r1", "inc-1", 5_000)
    assert not await store.notify_replica("r1", "inc-0", "input", session.ref)  # other inc.
    assert await store.notify_replica(
        "r1", "inc-1", "cancel", session.ref, "run_9", touch=(session, 1234)
    )
    mails = await streams.read_mail("r1", "0-0", block_ms=1)
    assert [(m.kind, m.session_ref, m.run_id) for m in mails] == [("cancel", session.ref, "run_9")]
    assert await redis_client.zscore(store.keys.sessions, session.ref) == 1234
    # an input mail names the input's mode when the sender knows it (runner/control.py)
    assert await store.notify_replica("r1", "inc-1", "input", session.ref, multitask="enqueue")
    assert await store.notify_replica("r1", "inc-1", "input", session.ref)
    mails = await streams.read_mail("r1", mails[-1].id, block_ms=1)
    assert [(m.kind, m.multitask) for m in mails] == [("input", "enqueue"), ("input", "")]


async def test_peek_inbox_reads_inputs_head_state_and_cancel_in_one_call(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    assert await store.peek_inbox(session, 10) == InboxPeek([], None, None, False)
    a = await store.enqueue(session, "run_1", '{"q": 1}', source="event:gh")
    await store.enqueue(session, "run_2", "{}", multitask="interrupt")
    peek = await store.peek_inbox(session, 10)
    assert peek.head is not None
    head = peek.head.parse()
    assert (head.id, head.run_id, head.input, head.source) == (
        a.entry_id,
        "run_1",
        {"q": 1},
        "event:gh",
    )
    assert head.input_json == '{"q": 1}' and peek.head.input_bytes == len('{"q": 1}')
    assert [(m.run_id, m.multitask) for m in peek.metas] == [
        ("run_1", "enqueue"),
        ("run_2", "interrupt"),
    ]
    assert (peek.state, peek.cancel_requested) == (None, False)
    assert [m.run_id for m in (await store.peek_inbox(session, 1)).metas] == ["run_1"]
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    await store.ingest(session, "run_1", lease.token, [Entry(1, "run.started", {"attempt": 2})])
    await Streams(redis_client, store.keys).request_cancel(session, "run_1")
    peek = await store.peek_inbox(session, 10)
    assert peek.state is not None
    assert (peek.state.status, peek.state.attempt, peek.cancel_requested) == ("started", 2, True)


async def test_peek_inbox_returns_only_the_head_input_in_full(
    store: LeaseStore, session: SessionKeys
) -> None:
    """The lookahead reads ids and modes only: large inputs behind the head never travel."""
    big = '"' + "x" * 200_000 + '"'
    ids = [(await store.enqueue(session, f"run_{i}", big)).entry_id for i in range(20)]
    await store.enqueue(session, "run_last", "{}", multitask="interrupt")
    peek = await store.peek_inbox(session, 100)  # more than one chunk of the script's reads
    assert [m.id for m in peek.metas[:20]] == ids
    assert [m.run_id for m in peek.metas] == [f"run_{i}" for i in range(20)] + ["run_last"]
    assert peek.metas[-1].multitask == "interrupt"
    assert peek.head is not None and peek.head.id == ids[0]
    assert peek.head.input_bytes == len(big)
    window = await store.peek_inbox(session, 17)
    assert [m.run_id for m in window.metas] == [f"run_{i}" for i in range(17)]
    bare = await store.peek_inbox(session, 100, with_head=False)
    assert bare.head is None and len(bare.metas) == 21


# -- completeInput-3 ---------------------------------------------------------------------


async def test_complete_input_is_fenced(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    a = await store.enqueue(session, "run_1", "{}")
    b = await store.enqueue(session, "run_2", "{}")
    assert a.entry_id and b.entry_id
    with pytest.raises(StaleToken):  # never acquired: no token is valid
        await store.complete_input(session, 0, a.entry_id)
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert await store.complete_input(session, old.token, a.entry_id) == 1
    assert (await redis_client.hgetall(session.meta))["inbox_cursor"] == a.entry_id
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "i", LEASE_TTL_MS)
    with pytest.raises(StaleToken) as exc:
        await store.complete_input(session, old.token, b.entry_id)
    assert exc.value.epoch == new.token
    assert await redis_client.xlen(session.inbox) == 1
    assert (await redis_client.hgetall(session.meta))["inbox_cursor"] == a.entry_id
    assert await store.complete_input(session, new.token, b.entry_id) == 0


async def test_advance_inbox_completes_then_peeks_the_next_head_fenced(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """advanceInbox-5 = completeInput-3 + peekInbox-5 (head in full, its take recorded)."""
    a = await store.enqueue(session, "run_1", '{"n": 1}')
    b = await store.enqueue(session, "run_2", '{"n": 2}', multitask="interrupt")
    assert a.entry_id and b.entry_id
    with pytest.raises(StaleToken):  # never acquired: nothing consumed
        await store.advance_inbox(session, 0, a.entry_id, 10)
    assert await redis_client.xlen(session.inbox) == 2
    old = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    peek = await store.advance_inbox(session, old.token, a.entry_id, 10)
    assert [(m.id, m.run_id, m.multitask) for m in peek.metas] == [
        (b.entry_id, "run_2", "interrupt")
    ]
    assert peek.head is not None and peek.head.parse().input == {"n": 2}
    assert peek.owners == 1  # the new head's take recorded under this token
    meta = await redis_client.hgetall(session.meta)
    assert meta["inbox_cursor"] == a.entry_id
    assert meta["head_taken"] == f"{b.entry_id}|{old.token}|1"
    # the same reply as a plain peek by the same owner
    assert await store.peek_inbox(session, 10, token=old.token) == peek
    new = await store.takeover(session, ("r1", "inc-1", old.token), "r2", "i", LEASE_TTL_MS)
    with pytest.raises(StaleToken) as exc:  # a superseded owner consumes nothing
        await store.advance_inbox(session, old.token, b.entry_id, 10)
    assert exc.value.epoch == new.token
    assert await redis_client.xlen(session.inbox) == 1
    empty = await store.advance_inbox(session, new.token, b.entry_id, 10)
    assert empty == InboxPeek([], None, None, False) and await redis_client.xlen(session.inbox) == 0


async def test_ingest_advance_consumes_the_input_only_after_its_entries_are_stored(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """ingestAdvance-7 = ingestEntries-5, then (only if it succeeded) advanceInbox-5; its
    peek, as the API passes it on, parses to what advanceInbox-5 answers; a retry (its
    answer lost) changes nothing but is answered alike."""
    ch = store.keys.starts_channel("api1")
    heard = redis_client.pubsub()
    await heard.subscribe(ch)
    await heard.get_message(timeout=1.0)  # the subscribe confirmation
    a = await store.enqueue(session, "run_1", '{"n": 1}')
    b = await store.enqueue(session, "run_2", '{"n": 2}', starts_to=ch)
    assert a.entry_id and b.entry_id
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    tok, owner = lease.token, {"replica_id": "r1", "incarnation": "inc-1"}
    ended = [Entry(1, "run.started", {}), Entry(2, "run.completed", {})]
    adv = (a.entry_id, 10, ("r1", 3))
    with pytest.raises(SeqGap):  # a refused append consumes nothing
        await store.ingest(session, "run_1", tok, [Entry(5, "run.completed", {})], advance=adv)
    with pytest.raises(StaleToken):
        await store.ingest(session, "run_1", tok + 1, ended, advance=adv)
    with pytest.raises(NotOwner):
        await store.ingest(
            session, "run_1", tok, ended, advance=adv, **{**owner, "incarnation": "x"}
        )
    assert (
        await redis_client.xlen(session.inbox) == 2 and await log_ids(redis_client, session) == []
    )
    got = await store.ingest(session, "run_1", tok, ended, advance=adv, **owner)
    assert (got.accepted, got.duplicates, got.last_seq) == (2, 0, 2)
    assert await log_ids(redis_client, session) == ["1-0", "2-0"]
    assert got.peek is not None
    peek = peek_from_wire(orjson.loads(orjson.dumps(got.peek)))  # through the API's JSON
    assert [m.run_id for m in peek.metas] == ["run_2"] and peek.owners == 1 and peek.announced
    assert peek.head is not None and peek.head.parse().input == {"n": 2}
    assert await redis_client.xlen(session.inbox) == 1
    assert (await redis_client.hgetall(session.meta))["inbox_cursor"] == a.entry_id
    m = await heard.get_message(ignore_subscribe_messages=True, timeout=1.0)
    assert m is not None and StartNotice.parse(m["data"]) == StartNotice(
        session.ref, "run_2", "r1", tok
    )
    # the same as a plain advance by the same owner (which would XDEL a consumed entry: no-op)
    assert await store.advance_inbox(session, tok, a.entry_id, 10) == InboxPeek(
        peek.metas, peek.head, peek.state, peek.cancel_requested, peek.owners, False
    )
    again = await store.ingest(session, "run_1", tok, ended, advance=adv, **owner)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert peek_from_wire(again.peek or []) == InboxPeek(
        peek.metas, peek.head, peek.state, peek.cancel_requested, peek.owners, False
    )
    assert await redis_client.xlen(session.inbox) == 1
    # a retried (or late) copy finds its input consumed: it announces nothing again
    assert await heard.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    await heard.aclose()  # type: ignore[no-untyped-call, unused-ignore]


async def test_a_peek_asked_to_announce_publishes_only_a_runnable_heads_start(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """peekInbox / advanceInbox with ``announce``: the head's start notice is published on its
    ``starts_to`` channel exactly when the owner would run it (runner/inbox.py): its take
    recorded, not poison, nothing interrupting behind it, no cancel, its run not ended."""
    ch = store.keys.starts_channel("api1")
    heard = redis_client.pubsub()
    await heard.subscribe(ch)
    await heard.get_message(timeout=1.0)  # the subscribe confirmation
    streams = Streams(redis_client)
    lease = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    tok, ann = lease.token, ("r1", 0)

    async def peek(token: int = tok, announce: tuple[str, int] | None = ann) -> bool:
        got = await store.peek_inbox(session, 10, token=token, announce=announce)
        return got.announced

    async def notices() -> list[StartNotice | None]:
        out = []
        while (
            m := await heard.get_message(ignore_subscribe_messages=True, timeout=0.1)
        ) is not None:
            out.append(StartNotice.parse(m["data"]))
        return out

    a = await store.enqueue(session, "run_a", "{}")  # names no channel
    assert not await peek()
    await store.complete_input(session, tok, str(a.entry_id))
    b = await store.enqueue(session, "run_b", "{}", starts_to=ch)
    assert not await peek(announce=None)  # not asked
    assert not await peek(token=0)  # no take recorded
    assert await notices() == []
    assert await peek()
    assert await notices() == [StartNotice(session.ref, "run_b", "r1", tok)]
    await streams.request_cancel(session, "run_b")
    assert not await peek()  # its cancel was requested
    await redis_client.srem(session.cancels, "run_b")
    c = await store.enqueue(session, "run_c", "{}", multitask="interrupt")
    assert not await peek()  # an interrupting input waits behind it
    await store.complete_input(session, tok, str(c.entry_id))  # (out of order: gone)
    ended = [Entry(1, "run.started", {}), Entry(2, "run.completed", {})]
    await store.ingest(session, "run_b", tok, ended)
    assert not await peek()  # its run ended already (the owner died before consuming it)
    await redis_client.hdel(session.runs, "run_b")
    await store.force_release(session, "test")  # the owner died with the head taken
    second = await store.acquire(session, "r2", "inc-2", LEASE_TTL_MS)
    assert not await peek(second.token, ("r2", 1))  # one owner died taking it: poison at 1
    assert not await peek(tok, ("r1", 0))  # the superseded owner: its take is not recorded
    assert await notices() == []
    assert await peek(second.token, ("r2", 2))  # below the limit: runnable
    assert await notices() == [StartNotice(session.ref, "run_b", "r2", second.token)]
    # an interrupted run is run again
    interrupted = '{"status":"interrupted","token":1,"replica_id":"r1","attempt":1}'
    await redis_client.hset(session.runs, "run_b", interrupted)
    assert await peek(second.token, ("r2", 0))
    e = await store.enqueue(session, "run_e", "{}", starts_to=ch, multitask="interrupt")
    assert not await peek(second.token, ("r2", 0))  # (it is cancelled by run_e)
    # advanceInbox announces the next head as peekInbox does: run_e interrupts, and runs
    got = await store.advance_inbox(session, second.token, str(b.entry_id), 10, ("r2", 0))
    assert got.announced and got.metas[0].id == e.entry_id
    assert await notices() == [
        StartNotice(session.ref, "run_b", "r2", second.token),  # (the interrupted one)
        StartNotice(session.ref, "run_e", "r2", second.token),
    ]
    await heard.aclose()  # type: ignore[no-untyped-call, unused-ignore]


async def test_peek_inbox_counts_each_owner_that_takes_the_head_fenced(
    store: LeaseStore, session: SessionKeys
) -> None:
    """The poison count: each new owner token taking the head counts once, a stale one never,
    and a new head starts again at one."""
    await store.enqueue(session, "run_1", "{}")
    await store.enqueue(session, "run_2", "{}")
    assert (await store.peek_inbox(session, 10)).owners == 0  # no token: nothing recorded
    first = await store.acquire(session, "r1", "inc-1", LEASE_TTL_MS)
    assert (await store.peek_inbox(session, 10, token=first.token)).owners == 1
    assert (await store.peek_inbox(session, 10, token=first.token)).owners == 1  # same owner
    await store.force_release(session, "test")  # the owner died with the head taken
    second = await store.acquire(session, "r2", "inc-2", LEASE_TTL_MS)
    assert (await store.peek_inbox(session, 10, token=second.token)).owners == 2
    assert (await store.peek_inbox(session, 10, token=first.token)).owners == 0  # stale: refused
    assert (await store.peek_inbox(session, 10, token=second.token)).owners == 2
    head = (await store.peek_inbox(session, 1)).metas[0]
    await store.complete_input(session, second.token, head.id)
    assert (await store.peek_inbox(session, 10, token=second.token)).owners == 1  # run_2 now
