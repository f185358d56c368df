"""Invocation: submit an input, wake (or find) its session's owner, wait for the run to start,
cancel a run. The session routes and event routing call these; they hold no HTTP details.

A warm invoke costs two Redis round trips (``submit``): keep it that way.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import Response

from streamward.api.config import Settings
from streamward.api.deps import AppState, quotas_of
from streamward.api.inputs import encode_input
from streamward.api.quotas import Quotas
from streamward.api.responses import OrjsonResponse
from streamward.api.schemas import InvokeAccepted, InvokeRequest, Owner
from streamward.api.starts import LOCAL_WAIT_S, starts_or_ends
from streamward.core.contract import RUN_STARTED, TERMINAL_STATUSES, Entry
from streamward.core.tracing import inbox_traceparent
from streamward.lua.inbox import RunState
from streamward.lua.keys import SessionKeys
from streamward.lua.leases import Ownership
from streamward.lua.store import Enqueued, LeaseStore
from streamward.lua.streams import Streams


def _before(entry_id: str) -> str:
    """The id just before a log entry (entry ids are ``<seq>-0``)."""
    seq = int(entry_id.split("-", 1)[0])
    return f"{seq - 1}-0" if seq > 0 else "0-0"


async def notify_owner(streams: Streams, sk: SessionKeys, own: Ownership, reason: str) -> None:
    """Mail the live owner, else ask the fleet for one (the inbox append came first)."""
    if own.alive and own.replica_id is not None:
        await streams.send_mail(own.replica_id, "input", sk.ref)
    else:
        await streams.publish_work(sk.ref, reason)


async def cancel_run(streams: Streams, sk: SessionKeys, own: Ownership, run_id: str) -> None:
    """Ask for ``run_id``'s cancellation; answered before the run stops."""
    # the cancels set covers a run its owner has not reached yet; the mail is the fast path
    await streams.request_cancel(sk, run_id)
    if own.alive and own.replica_id is not None:
        await streams.send_mail(own.replica_id, "cancel", sk.ref, run_id)


def _accepted_from_state(sk: SessionKeys, rs: RunState) -> InvokeAccepted | None:
    if rs.status == "started" and rs.replica_id and rs.token is not None:
        owner = Owner(replica_id=rs.replica_id, token=rs.token)
        return InvokeAccepted(
            run_id=rs.run_id, session_id=sk.session_id, status="running", owner=owner
        )
    if rs.status in TERMINAL_STATUSES:
        return InvokeAccepted(
            run_id=rs.run_id,
            session_id=sk.session_id,
            status=rs.status,  # type: ignore[arg-type]
            owner=None,
        )
    return None  # interrupted: a restart follows, wait for its run.started


def _accepted_from_start(sk: SessionKeys, run_id: str, first: Entry) -> InvokeAccepted:
    if first.type == RUN_STARTED:
        owner = Owner(replica_id=first.started_by, token=first.token)
        return InvokeAccepted(
            run_id=run_id, session_id=sk.session_id, status="running", owner=owner
        )
    status = first.type.removeprefix("run.")  # ended before it started (e.g. cancelled)
    return InvokeAccepted(
        run_id=run_id,
        session_id=sk.session_id,
        status=status,  # type: ignore[arg-type]
        owner=None,
    )


async def wait_start(
    state: AppState,
    sk: SessionKeys,
    run_id: str,
    after: str,
    started: asyncio.Future[Entry],
    notified: bool = False,
) -> InvokeAccepted:
    """Wait until ``run_id`` starts (or ends), or answer queued at the start timeout: in
    memory when the owner's start notice comes here (``notified``: the input named this
    process's channel, and notices do come) or this process ingests the start (see
    api/starts.py), else (and always in the end) by tailing the log from ``after``, the
    position read before the append."""
    settings = state.settings
    deadline = time.monotonic() + settings.start_timeout_s
    if notified or state.starts.trusted:
        # the start is (nearly always) heard here: no Redis call unless it is slow, then
        # the log tail below takes over (it misses nothing: it reads from the position
        # seen at submit). Notices start trusted: a fresh process, or one whose every
        # invoke is a new session's, waits in memory from its first invoke on.
        await asyncio.wait({started}, timeout=min(LOCAL_WAIT_S, settings.start_timeout_s))
    count = state.metrics.start_wait if state.metrics is not None else None
    cursor = after
    while True:
        if started.done():
            if count is not None:
                count["memory"].inc()
            return _accepted_from_start(sk, run_id, started.result())
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        batch = await state.streams.wait_log(
            sk, cursor, block_ms=max(1, min(settings.tail_block_ms, remaining_ms)), count=200
        )
        for e in batch:
            cursor = e.id
            if e.run_id != run_id or not starts_or_ends(e):
                continue
            if count is not None:
                count["log"].inc()
            return _accepted_from_start(sk, run_id, e)
    if count is not None:
        count["queued"].inc()
    return InvokeAccepted(run_id=run_id, session_id=sk.session_id, status="queued", owner=None)


async def submit(
    store: LeaseStore,
    streams: Streams,
    settings: Settings,
    sk: SessionKeys,
    body: InvokeRequest,
    run_id: str,
    *,
    quotas: Quotas,
    starts_to: str = "",
) -> tuple[str, str, RunState | None]:
    """Enqueue (or find the idempotent duplicate); return (run_id, tail position, run state).

    A fresh input costs two round trips: the enqueue script (which also reads the log end
    before the append and the lease holder after it, and checks the session's inbox limit),
    then the owner's mail (sent only if its replica lease is alive) pipelined with the
    session index update. A project with a project quota configured adds its admission
    call before the enqueue (api/quotas.py). Raises the quota refusals (429).
    """
    enq = await quotas.enqueue(
        store,
        sk,
        run_id,
        encode_input(body.input, settings.max_input_bytes),
        traceparent=inbox_traceparent(),
        multitask=body.multitask,
        idempotency_key=body.idempotency_key,
        idempotency_ttl_ms=settings.idempotency_ttl_s * 1000,
        session_type=body.type or "",
        default_type=settings.default_type,
        # the owner this session's last invoke saw is mailed in the append's round trip
        # (not for an interrupt: its cancel goes to the owner before the input's mail)
        predict_mail=body.multitask != "interrupt",
        starts_to=starts_to,  # a detached invoke's channel: the owner tells it of the start
    )
    # the log position the script read before the append (for a duplicate: before the run
    # state is read below), so the run's first entry is always after it
    after = enq.log_last_id
    if enq.duplicate:
        rs = await streams.run_state(sk, enq.run_id)
        if rs is not None and rs.started_id:
            after = _before(rs.started_id)
        if rs is None or rs.status not in TERMINAL_STATUSES:
            # a retry after a failed call: the append may have landed while asking for an
            # owner did not (Redis failing over; on Cluster the work queue is another node),
            # so ask again. A spare notification costs one idle claim, a missing one strands
            # the input until the session's next invoke.
            await notify_owner(streams, sk, await store.ownership(sk), "invoke")
        return enq.run_id, after, rs
    await wake_owner(store, streams, sk, enq, body.multitask, "invoke")
    return enq.run_id, after, None


async def wake_owner(
    store: LeaseStore,
    streams: Streams,
    sk: SessionKeys,
    enq: Enqueued,
    multitask: str,
    reason: str,
) -> None:
    """After a fresh append (invoke or routed event): mail the holder the script saw, pipelined
    with the session index update (one round trip), else ask the fleet for an owner."""
    if enq.revived:  # a deleted or expired session invoked again keeps its transcript
        await streams.revive_session(sk)
    if multitask == "interrupt" and enq.active_run_id:
        await cancel_run(streams, sk, await store.ownership(sk), enq.active_run_id)
    if enq.mailed is not None and enq.mailed == enq.holder and not enq.revived:
        return  # the holder was mailed (and the index touched) with the append
    # the entry id carries Redis time: no TIME round trip for the index score
    touch = (sk, enq.enqueued_ms or 0)
    if enq.holder is not None and await store.notify_replica(
        *enq.holder, "input", sk.ref, touch=touch, multitask=multitask
    ):
        return
    # the script read the session's type: publish to its work stream with no extra read
    work_type = enq.session_type or None
    if enq.holder is None:
        await asyncio.gather(
            streams.touch_session(sk, enq.enqueued_ms),
            streams.publish_work(sk.ref, reason, work_type),
        )
    else:  # held by a dead replica (the index is scored already): the fleet takes it over
        await streams.publish_work(sk.ref, reason, work_type)


RUN_HEADER = "X-Streamward-Run-Id"


def accepted_response(accepted: InvokeAccepted) -> Response:
    """A detached invoke's answer: 202, the run id also in a header."""
    return OrjsonResponse(
        accepted.model_dump(), status_code=202, headers={RUN_HEADER: accepted.run_id}
    )


async def invoke_detached(
    state: AppState, sk: SessionKeys, body: InvokeRequest, run_id: str
) -> InvokeAccepted:
    """Submit, then answer once the run started or ended (or queued at the start timeout).
    The answer's ``run_id`` is an earlier run's for an idempotent retry."""
    starts = state.starts
    # registered before the append: the run may start (its start ingested right here)
    # before the submit's last round trip returns
    channel = starts.channel  # "" while not subscribed: then no owner is asked to notify
    started = starts.register(sk.ref, run_id, notified=bool(channel))
    waited: InvokeAccepted | None = None
    try:
        got_id, after, rs = await submit(
            state.store,
            state.streams,
            state.settings,
            sk,
            body,
            run_id,
            quotas=quotas_of(state),
            starts_to=channel,
        )
        # an idempotent retry's run named the channel of the request that made it, if any;
        # and where the owners cannot publish, notices are learnt not to come
        notified = bool(channel) and got_id == run_id and starts.notices_trusted
        if got_id != run_id:  # an idempotent retry of an earlier run
            starts.done(sk.ref, run_id, waited=False)
            run_id = got_id
            started = starts.register(sk.ref, run_id)
        accepted = _accepted_from_state(sk, rs) if rs is not None else None
        if accepted is None:
            accepted = waited = await wait_start(
                state, sk, run_id, after, started, notified=notified
            )
    finally:
        starts.done(sk.ref, run_id, waited=waited is not None and waited.status != "queued")
    return accepted
