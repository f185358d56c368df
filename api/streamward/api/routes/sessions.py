"""Public /v1 session endpoints: invoke, events, detach, cancel, liveness, list/get/delete."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Header, Query
from starlette.responses import Response

from streamward.api.config import Settings
from streamward.api.deps import (
    AppState,
    ProjectDep,
    SessionDep,
    SettingsDep,
    StateDep,
    StateSessionDep,
    StoreDep,
    StreamsDep,
)
from streamward.api.problems import ProblemError
from streamward.api.responses import OrjsonResponse
from streamward.api.routes.common import entry_out, owner_detail, rfc3339_opt
from streamward.api.routes.streaming import (
    NDJSON,
    SSE,
    Tail,
    TailResponse,
    make_producer,
    new_connection_id,
    wants_sse,
)
from streamward.api.schemas import (
    CancelRequest,
    CancelResult,
    DetachRequest,
    DetachResult,
    InvokeAccepted,
    InvokeRequest,
    Liveness,
    Owner,
    SessionOut,
    SessionPage,
    TranscriptPage,
)
from streamward.api.starts import LOCAL_WAIT_S, Started
from streamward.lua.inbox import RunState
from streamward.lua.keys import SessionKeys
from streamward.lua.leases import Ownership
from streamward.lua.store import Enqueued, LeaseStore
from streamward.lua.streams import Streams

router = APIRouter(prefix="/v1", tags=["sessions"])
# invoke alone in a router of its own, included first (api/main.py): the app tries routes
# one by one, and this is the hottest one
invoke_router = APIRouter(prefix="/v1", tags=["sessions"])

CONNECTION_HEADER = "X-Streamward-Connection"
RUN_HEADER = "X-Streamward-Run-Id"
AFTER_HEADER = "X-Streamward-After"  # the log position the tail starts after (for resuming)
LOG_ID = re.compile(r"^(0|[0-9]{1,20}(-[0-9]{1,20})?)$")
LOG_ID_PATTERN = LOG_ID.pattern
FINISHED = {"completed", "failed", "cancelled"}

_COMMON: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "unknown session"},
    422: {"description": "invalid id or body"},
    503: {"description": "redis_unavailable (with Retry-After)"},
}
_STREAM_CONTENT = {
    NDJSON: {"schema": {"type": "string", "description": "one LogEntryOut JSON per line"}},
    SSE: {"schema": {"type": "string", "description": "SSE events, id = entry id"}},
}


def _log_id(value: str) -> str:
    if LOG_ID.fullmatch(value) is None:
        raise ProblemError(422, "invalid_log_id", f"not a log entry id: {value[:64]!r}")
    return value if "-" in value else f"{value}-0"


def _before(entry_id: str) -> str:
    """The id just before a log entry (entry ids are ``<seq>-0``)."""
    seq = int(entry_id.split("-", 1)[0])
    return f"{seq - 1}-0" if seq > 0 else "0-0"


async def _meta_or_404(streams: Streams, sk: SessionKeys) -> dict[str, str]:
    meta = await streams.meta(sk)
    if not meta:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return meta


async def _notify_owner(streams: Streams, sk: SessionKeys, own: Ownership, reason: str) -> None:
    """Mail the live owner, else ask the fleet for one (the inbox append came first)."""
    if own.alive and own.replica_id is not None:
        await streams.send_mail(own.replica_id, "input", sk.ref)
    else:
        await streams.publish_work(sk.ref, reason)


async def _cancel_run(streams: Streams, sk: SessionKeys, own: Ownership, run_id: str) -> None:
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
    if rs.status in FINISHED:
        return InvokeAccepted(
            run_id=rs.run_id,
            session_id=sk.session_id,
            status=rs.status,  # type: ignore[arg-type]
            owner=None,
        )
    return None  # interrupted: a restart follows, wait for its run.started


def _accepted_from_start(sk: SessionKeys, run_id: str, st: Started) -> InvokeAccepted:
    if st.type == "run.started":
        owner = Owner(replica_id=st.replica_id, token=st.token)
        return InvokeAccepted(
            run_id=run_id, session_id=sk.session_id, status="running", owner=owner
        )
    status = st.type.removeprefix("run.")  # ended before it started (e.g. cancelled)
    return InvokeAccepted(
        run_id=run_id,
        session_id=sk.session_id,
        status=status,  # type: ignore[arg-type]
        owner=None,
    )


async def _wait_start(
    state: AppState, sk: SessionKeys, run_id: str, after: str, started: asyncio.Future[Started]
) -> InvokeAccepted:
    """Wait until ``run_id`` starts (or ends), or answer queued at the start timeout: in
    memory when this process ingests the start (see api/starts.py), else (and always in the
    end) by tailing the log from ``after``, the position read before the append."""
    settings = state.settings
    deadline = time.monotonic() + settings.start_timeout_s
    if state.starts.trusted:
        # this process ingests (nearly) every start it waits for: no Redis call unless the
        # start is slow, then the log tail below takes over (it misses nothing: it reads
        # from the position seen at submit)
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
            if e.run_id != run_id or not (e.type == "run.started" or e.terminal):
                continue
            if count is not None:
                count["log"].inc()
            return _accepted_from_start(sk, run_id, Started.of(e.type, e.token, e.data))
    if count is not None:
        count["queued"].inc()
    return InvokeAccepted(run_id=run_id, session_id=sk.session_id, status="queued", owner=None)


async def _submit(
    store: LeaseStore,
    streams: Streams,
    settings: Settings,
    sk: SessionKeys,
    body: InvokeRequest,
    run_id: str,
) -> tuple[str, str, RunState | None]:
    """Enqueue (or find the idempotent duplicate); return (run_id, tail position, run state).

    A fresh input costs two round trips: the enqueue script (which also reads the log end
    before the append and the lease holder after it), then the owner's mail (sent only if
    its replica lease is alive) pipelined with the session index update.
    """
    enq = await store.enqueue(
        sk,
        run_id,
        orjson.dumps(body.input).decode(),
        multitask=body.multitask,
        idempotency_key=body.idempotency_key,
        idempotency_ttl_ms=settings.idempotency_ttl_s * 1000,
    )
    # the log position the script read before the append (for a duplicate: before the run
    # state is read below), so the run's first entry is always after it
    after = enq.log_last_id
    if enq.duplicate:
        rs = await streams.run_state(sk, enq.run_id)
        if rs is not None and rs.started_id:
            after = _before(rs.started_id)
        if rs is None or rs.status not in FINISHED:
            # a retry after a failed call: the append may have landed while asking for an
            # owner did not (Redis failing over; on Cluster the work queue is another node),
            # so ask again. A spare notification costs one idle claim, a missing one strands
            # the input until the session's next invoke.
            await _notify_owner(streams, sk, await store.ownership(sk), "invoke")
        return enq.run_id, after, rs
    await _wake_owner(store, streams, sk, enq, body.multitask, "invoke")
    return enq.run_id, after, None


async def _wake_owner(
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
        await _cancel_run(streams, sk, await store.ownership(sk), enq.active_run_id)
    # the entry id carries Redis time: no TIME round trip for the index score
    touch = (sk.ref, enq.enqueued_ms or 0)
    if enq.holder is not None and await store.notify_replica(
        *enq.holder, "input", sk.ref, touch=touch
    ):
        return
    if enq.holder is None:
        await asyncio.gather(
            streams.touch_session(sk, enq.enqueued_ms), streams.publish_work(sk.ref, reason)
        )
    else:  # held by a dead replica (the index is scored already): the fleet takes it over
        await streams.publish_work(sk.ref, reason)


@invoke_router.post(
    "/sessions/{session_id}/invoke",
    response_model=None,
    status_code=202,
    responses={
        **_COMMON,
        200: {"description": "mode=stream: the run's entries", "content": _STREAM_CONTENT},
        202: {"model": InvokeAccepted, "description": "mode=detached: started or queued"},
        409: {"description": "session_busy (multitask=reject)"},
        413: {"description": "body_too_large"},
    },
)
async def invoke(
    body: InvokeRequest,
    ctx: StateSessionDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Submit an input: detached answers 202 once the run starts; stream follows the run."""
    # one dependency for state, auth and session keys: each resolved dependency costs
    # measurable CPU on the hottest endpoint
    state, sk = ctx
    store, streams, settings = state.store, state.streams, state.settings
    run_id = f"run_{uuid.uuid4().hex}"
    if body.mode == "detached":
        return await _invoke_detached(state, sk, body, run_id)
    run_id, after, _ = await _submit(store, streams, settings, sk, body, run_id)
    return await _open_tail(
        streams, settings, Tail(sk, after, run_id=run_id), wants_sse(accept), {RUN_HEADER: run_id}
    )


async def _invoke_detached(
    state: AppState, sk: SessionKeys, body: InvokeRequest, run_id: str
) -> Response:
    starts = state.starts
    # registered before the append: the run may start (its start ingested right here)
    # before the submit's last round trip returns
    started = starts.register(sk.ref, run_id)
    waited: InvokeAccepted | None = None
    try:
        got_id, after, rs = await _submit(
            state.store, state.streams, state.settings, sk, body, run_id
        )
        if got_id != run_id:  # an idempotent retry of an earlier run
            starts.done(sk.ref, run_id, waited=False)
            run_id = got_id
            started = starts.register(sk.ref, run_id)
        accepted = _accepted_from_state(sk, rs) if rs is not None else None
        if accepted is None:
            accepted = waited = await _wait_start(state, sk, run_id, after, started)
    finally:
        starts.done(sk.ref, run_id, waited=waited is not None and waited.status != "queued")
    return OrjsonResponse(accepted.model_dump(), status_code=202, headers={RUN_HEADER: run_id})


async def _open_tail(
    streams: Streams, settings: Settings, tail: Tail, sse: bool, headers: dict[str, str]
) -> Response:
    if tail.follow:
        tail.conn_id = new_connection_id()
        await streams.attach(tail.session, tail.conn_id, int(settings.attach_ttl_s * 1000))
        headers[CONNECTION_HEADER] = tail.conn_id
    headers[AFTER_HEADER] = tail.after
    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"  # proxies must not buffer a live tail
    return TailResponse(
        make_producer(streams, settings, tail, sse), SSE if sse else NDJSON, headers
    )


@router.get(
    "/sessions/{session_id}/events",
    response_model=None,
    responses={**_COMMON, 200: {"description": "log entries", "content": _STREAM_CONTENT}},
)
async def events(
    sk: SessionDep,
    streams: StreamsDep,
    settings: SettingsDep,
    after: Annotated[
        str | None,
        Query(pattern=LOG_ID_PATTERN, description="Entry id to resume after (default: start)."),
    ] = None,
    follow: Annotated[bool, Query(description="Keep tailing (default) or stop at the end.")] = True,
    run_id: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9._:-]{1,200}$",
            description="Only this run's entries; ends after its terminal entry.",
        ),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Resume or tail the session log as NDJSON (or SSE, honouring ``Last-Event-ID``)."""
    await _meta_or_404(streams, sk)
    start = after if after is not None else last_event_id
    cursor = _log_id(start) if start else "0-0"
    tail = Tail(sk, cursor, run_id=run_id, follow=follow)
    if run_id is not None and follow:
        rs = await streams.run_state(sk, run_id)
        if rs is not None and rs.status in FINISHED and rs.last_id is not None:
            # the run is over: don't wait for a terminal entry that is already behind us
            last = int(rs.last_id.split("-", 1)[0])
            if last <= int(cursor.split("-", 1)[0]):
                tail.follow = False
    headers: dict[str, str] = {}
    if run_id is not None:
        headers[RUN_HEADER] = run_id
    return await _open_tail(streams, settings, tail, wants_sse(accept), headers)


@router.post("/sessions/{session_id}/detach", response_model=DetachResult, responses=_COMMON)
async def detach(
    sk: SessionDep, streams: StreamsDep, body: Annotated[DetachRequest | None, Body()] = None
) -> DetachResult:
    """The caller leaves (one connection, or all of them); the run goes on."""
    await _meta_or_404(streams, sk)
    n = await streams.detach(sk, body.connection_id if body is not None else None)
    return DetachResult(session_id=sk.session_id, detached=n)


@router.post(
    "/sessions/{session_id}/cancel",
    response_model=CancelResult,
    status_code=202,
    responses={**_COMMON, 409: {"description": "no_active_run / run_finished"}},
)
async def cancel(
    sk: SessionDep,
    store: StoreDep,
    streams: StreamsDep,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> CancelResult:
    """Cancel the active run (or a named queued/running one); answered before it stops."""
    meta = await _meta_or_404(streams, sk)
    run_id = body.run_id if body is not None and body.run_id else meta.get("active_run_id")
    if not run_id or meta.get("status") == "deleted":
        raise ProblemError(409, "no_active_run", "the session has no active run")
    rs = await streams.run_state(sk, run_id)
    if rs is not None and rs.status in FINISHED:
        raise ProblemError(409, "run_finished", f"run {run_id} already {rs.status}")
    await _cancel_run(streams, sk, await store.ownership(sk), run_id)
    return CancelResult(session_id=sk.session_id, run_id=run_id, status="cancelling")


@router.get("/sessions/{session_id}/liveness", response_model=Liveness, responses=_COMMON)
async def liveness(sk: SessionDep, store: StoreDep, streams: StreamsDep) -> Liveness:
    """Is someone running this session, since when, how much is waiting, who is attached."""
    (meta, pending, attached), own = await asyncio.gather(
        streams.session_overview(sk), store.ownership(sk)
    )
    if not meta:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return Liveness(
        session_id=sk.session_id,
        alive=own.alive,
        status=meta.get("status") or "unknown",
        owner=owner_detail(own),
        pending=pending,
        attached=attached,
        active_run_id=meta.get("active_run_id") or None,
    )


async def _session_out(store: LeaseStore, streams: Streams, sk: SessionKeys) -> SessionOut | None:
    (meta, pending, _), own = await asyncio.gather(
        streams.session_overview(sk), store.ownership(sk)
    )
    if not meta:
        return None
    return SessionOut(
        session_id=sk.session_id,
        project=sk.project,
        status=meta.get("status") or "unknown",
        created_at=rfc3339_opt(meta.get("created_ms")),
        updated_at=rfc3339_opt(meta.get("updated_ms")),
        active_run_id=meta.get("active_run_id") or None,
        last_seq=int(meta.get("last_seq") or 0),
        pending=pending,
        transitions=int(meta.get("transitions") or 0),
        owner=owner_detail(own),
        delete_after=rfc3339_opt(meta.get("delete_after_ms")),
        reason=meta.get("reason") or None,
        route_id=meta.get("route_id") or None,
        session_key=meta.get("session_key") or None,
        generation=int(meta["generation"]) if meta.get("generation") else None,
    )


@router.get("/sessions", response_model=SessionPage, responses=_COMMON)
async def list_sessions(
    project: ProjectDep,
    state: StateDep,
    status: Annotated[str | None, Query(max_length=64, description="Only this status.")] = None,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,20}$", description="next_cursor of a previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SessionPage:
    """The caller's sessions by ZSCAN page (a page may hold fewer than ``limit`` items)."""
    nxt, items = await state.streams.scan_sessions(int(cursor or 0), project, count=limit)
    sks = [state.keys.session_ref(ref) for ref, _ in items]
    outs = await asyncio.gather(*[_session_out(state.store, state.streams, sk) for sk in sks])
    page = [o for o in outs if o is not None and (status is None or o.status == status)]
    return SessionPage(items=page, next_cursor=str(nxt) if nxt != 0 else None)


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=_COMMON)
async def get_session(sk: SessionDep, store: StoreDep, streams: StreamsDep) -> SessionOut:
    """One session: status, activity, pending inputs, owner."""
    out = await _session_out(store, streams, sk)
    if out is None:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return out


@router.delete("/sessions/{session_id}", response_model=SessionOut, responses=_COMMON)
async def delete_session(
    sk: SessionDep, store: StoreDep, streams: StreamsDep, settings: SettingsDep
) -> SessionOut:
    """Cancel the active run, release (fence) the owner, drop pending state; keep the log."""
    meta = await _meta_or_404(streams, sk)
    own = await store.ownership(sk)
    active = meta.get("active_run_id")
    if active:
        await _cancel_run(streams, sk, own, active)
    if own.held:
        # bumps the epoch: the old owner's next write is refused and it drops the session
        await store.force_release(sk, "deleted")
    await streams.delete_session_state(sk)
    await streams.set_meta(sk, active_run_id="")
    # kept readable until retention ends, then every key of the session expires
    await streams.retire_session(sk, "deleted", "manual", settings.retention_s * 1000)
    await streams.forget_session(sk)
    out = await _session_out(store, streams, sk)
    assert out is not None
    return out


@router.get("/sessions/{session_id}/transcript", response_model=TranscriptPage, responses=_COMMON)
async def transcript(
    sk: SessionDep,
    streams: StreamsDep,
    after: Annotated[
        str | None, Query(pattern=LOG_ID_PATTERN, description="Entry id to page after.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TranscriptPage:
    """A page of the transcript, oldest first; ``next_after`` is null at the end."""
    await _meta_or_404(streams, sk)
    cursor = _log_id(after) if after else "0-0"
    entries = await streams.read_log(sk, cursor, count=limit)
    items = [entry_out(e, sk.session_id) for e in entries]
    more = len(entries) == limit
    return TranscriptPage(items=items, next_after=entries[-1].id if more else None)
