"""Public /v1 session endpoints: invoke, events, detach, cancel, liveness, list/get/delete."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from starlette.responses import Response

from streamward.api import callbacks
from streamward.api import invoke as invocation
from streamward.api.config import Settings
from streamward.api.deletion import end_deleted_runs
from streamward.api.deps import (
    AppState,
    ProjectDep,
    SessionDep,
    SettingsDep,
    StateDep,
    StateSessionDep,
    StoreDep,
    StreamsDep,
    mark_changed,
    quotas_of,
)
from streamward.api.listing import decode_cursor, redis_page
from streamward.api.problems import ProblemError
from streamward.api.replicas import served_types
from streamward.api.routes.common import entry_out, owner_detail, read_transcript, u64_ok
from streamward.api.routes.listing import (
    ListParams,
    RecordFilters,
    metadata_filters,
    record_page,
    wants_record,
)
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
    SessionOut,
    SessionPage,
    TranscriptPage,
)
from streamward.api.sessionview import session_out
from streamward.api.tracing import traced_invoke
from streamward.core import tracing
from streamward.core.contract import TERMINAL_STATUSES
from streamward.lua.keys import DEFAULT_TYPE, SessionKeys
from streamward.lua.streams import Streams

router = APIRouter(prefix="/v1", tags=["sessions"])
# invoke alone in a router of its own, included first (api/main.py): the app tries routes
# one by one, and this is the hottest one
invoke_router = APIRouter(prefix="/v1", tags=["sessions"])

CONNECTION_HEADER = "X-Streamward-Connection"
RUN_HEADER = invocation.RUN_HEADER
AFTER_HEADER = "X-Streamward-After"  # the log position the tail starts after (for resuming)
LOG_ID = re.compile(r"^(0|[0-9]{1,20}(-[0-9]{1,20})?)$")
LOG_ID_PATTERN = LOG_ID.pattern

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
    # each part of a stream id is an unsigned 64-bit number: Redis refuses a larger one
    if LOG_ID.fullmatch(value) is None or not all(u64_ok(p) for p in value.split("-")):
        raise ProblemError(422, "invalid_log_id", f"not a log entry id: {value[:64]!r}")
    return value if "-" in value else f"{value}-0"


async def _meta_or_404(streams: Streams, sk: SessionKeys) -> dict[str, str]:
    meta = await streams.meta(sk)
    if not meta:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return meta


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
        429: {"description": "inbox_full / rate_limited (with Retry-After)"},
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
    run_id = f"run_{uuid.uuid4().hex}"
    work = _invoke(state, sk, body, run_id, accept)
    return await (traced_invoke(work, sk, body) if tracing.TRACING_ON else work)


async def _invoke(
    state: AppState, sk: SessionKeys, body: InvokeRequest, run_id: str, accept: str | None
) -> Response:
    store, streams, settings = state.store, state.streams, state.settings
    if body.callback is not None and state.outbox is not None:
        # stored before the enqueue: no entry of the run can be ingested before it
        await callbacks.register(state.outbox, settings, sk, body.callback, run_id)
    if body.mode == "detached":  # (the plain case is served by api/fastinvoke.py)
        accepted = await invocation.invoke_detached(state, sk, body, run_id)
        return invocation.accepted_response(accepted)
    run_id, after, _ = await invocation.submit(
        store, streams, settings, sk, body, run_id, quotas=quotas_of(state)
    )
    return await _open_tail(
        streams, settings, Tail(sk, after, run_id=run_id), wants_sse(accept), {RUN_HEADER: run_id}
    )


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
    state: StateDep,
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
    # the pattern documented only: _log_id checks it (and the range) as invalid_log_id
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", json_schema_extra={"pattern": f"^$|{LOG_ID_PATTERN}"}),
    ] = None,
) -> Response:
    """Resume or tail the session log as NDJSON (or SSE, honouring ``Last-Event-ID``)."""
    await _meta_or_404(streams, sk)
    # a Last-Event-ID is checked even when ``after`` wins; an empty one means none (SSE)
    resume = _log_id(last_event_id) if last_event_id else None
    cursor = _log_id(after) if after is not None else resume or "0-0"
    tail = Tail(sk, cursor, run_id=run_id, follow=follow, record=state.record)
    if run_id is not None and follow:
        rs = await streams.run_state(sk, run_id)
        if rs is not None and rs.status in TERMINAL_STATUSES and rs.last_id is not None:
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
    if not run_id and meta.get("head_taken") and meta.get("status") != "deleted":
        # a detached invoke answers "running" once an owner took its input (its start
        # notice), before the run's run.started (which marks it active) is stored
        run_id = await streams.taken_run_id(sk, meta["head_taken"])
    if not run_id or meta.get("status") == "deleted":
        raise ProblemError(409, "no_active_run", "the session has no active run")
    rs = await streams.run_state(sk, run_id)
    if rs is not None and rs.status in TERMINAL_STATUSES:
        raise ProblemError(409, "run_finished", f"run {run_id} already {rs.status}")
    await invocation.cancel_run(streams, sk, await store.ownership(sk), run_id)
    return CancelResult(session_id=sk.session_id, run_id=run_id, status="cancelling")


@router.get("/sessions/{session_id}/liveness", response_model=Liveness, responses=_COMMON)
async def liveness(sk: SessionDep, store: StoreDep, streams: StreamsDep) -> Liveness:
    """Is someone running this session, since when, how much is waiting, who is attached."""
    (meta, pending, attached), own = await asyncio.gather(
        streams.session_overview(sk), store.ownership(sk)
    )
    if not meta:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    session_type = meta.get("type") or DEFAULT_TYPE
    waiting_for = None
    # input waits, nobody owns it: does any live runner serve its type at all?
    if pending and not own.alive and session_type not in await served_types(streams):
        waiting_for = session_type
    return Liveness(
        session_id=sk.session_id,
        alive=own.alive,
        status="no_runner_for_type" if waiting_for else meta.get("status") or "unknown",
        owner=owner_detail(own),
        pending=pending,
        attached=attached,
        active_run_id=meta.get("active_run_id") or None,
        type=session_type,
        waiting_for_type=waiting_for,
    )


_LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    410: {"description": "cursor_expired (the listing's snapshot is gone: start again)"},
    422: {"description": "invalid_cursor / invalid_filter / invalid_timestamp / ..."},
}


@router.get("/sessions", response_model=SessionPage, responses=_LIST_RESPONSES)
async def list_sessions(
    request: Request,
    project: ProjectDep,
    state: StateDep,
    cursor: Annotated[
        str | None, Query(max_length=2048, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size, exactly honoured.")] = 50,
    params: Annotated[ListParams, Depends()] = ListParams(),
    filters: Annotated[RecordFilters, Depends()] = RecordFilters(),
) -> SessionPage:
    """The caller's sessions, newest activity first (``sort``, ``order``), filtered (also
    ``metadata.<key>=<value>``), in pages of exactly ``limit`` with an opaque cursor that
    stays stable while sessions come, change and go (docs/api.md, "Listing sessions")."""
    q = params.query(metadata_filters(request))

    def render(sk: SessionKeys) -> Awaitable[SessionOut | None]:
        return session_out(state.store, state.streams, sk)

    if wants_record(params, filters, cursor, state.record is not None):
        if state.record is None:
            raise ProblemError(
                422,
                "record_not_configured",
                "this listing needs the record (STREAMWARD_DATABASE_URL)",
            )
        now = await state.streams.now_ms() if q.active_minutes is not None else 0
        return await record_page(
            state.record, state.keys, project, q, filters, cursor, limit, render, now
        )
    c = decode_cursor(cursor) if cursor is not None else None
    settings = state.settings
    first_ttl_s = min(settings.list_snapshot_first_ttl_s, settings.list_snapshot_ttl_s)
    items, nxt = await redis_page(
        state.streams, project, q, c, limit, render,
        scan_max=settings.list_scan_max,
        snapshot_ttl_ms=int(settings.list_snapshot_ttl_s * 1000),
        first_ttl_ms=int(first_ttl_s * 1000),
    )  # fmt: skip
    return SessionPage(items=items, next_cursor=nxt)


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=_COMMON)
async def get_session(sk: SessionDep, store: StoreDep, streams: StreamsDep) -> SessionOut:
    """One session: status, activity, pending inputs, owner."""
    out = await session_out(store, streams, sk)
    if out is None:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return out


@router.delete("/sessions/{session_id}", response_model=SessionOut, responses=_COMMON)
async def delete_session(
    sk: SessionDep, store: StoreDep, streams: StreamsDep, settings: SettingsDep, state: StateDep
) -> SessionOut:
    """Cancel the active run, release (fence) the owner, drop pending state; keep the log."""
    meta = await _meta_or_404(streams, sk)
    own = await store.ownership(sk)
    active = meta.get("active_run_id")
    if active:
        await invocation.cancel_run(streams, sk, own, active)
    holders: list[str] = []
    if own.held or active or await streams.pending(sk) > 0:
        # bumps the epoch: the old owner's next write is refused and it drops the session
        released = await store.force_release(sk, "deleted", "deleted")
        holders.append(released.old_replica_id)
        ended = await end_deleted_runs(store, streams, sk, active, released.new_epoch)
        await callbacks.after_api_writes(state.outbox, settings, sk, ended)
    await streams.delete_session_state(sk)
    await streams.set_meta(sk, active_run_id="")
    # kept readable until retention ends, then every key of the session expires
    await streams.retire_session(sk, "deleted", "manual", settings.retention_s * 1000)
    await streams.forget_session(sk)
    if (await store.ownership(sk)).held:
        # a runner claimed it while the delete ran (the fenced owner re-queued its inbox):
        # fence it too; it finds nothing to run
        holders.append((await store.force_release(sk, "deleted", "deleted")).old_replica_id)
    # told last, when there is nothing left to re-queue: the owners drop the session at once
    for replica_id in dict.fromkeys(h for h in holders if h):
        await streams.send_mail(replica_id, "released", sk.ref)
    await mark_changed(state, sk)
    out = await session_out(store, streams, sk)
    assert out is not None
    return out


@router.get("/sessions/{session_id}/transcript", response_model=TranscriptPage, responses=_COMMON)
async def transcript(
    sk: SessionDep,
    streams: StreamsDep,
    state: StateDep,
    after: Annotated[
        str | None, Query(pattern=LOG_ID_PATTERN, description="Entry id to page after.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TranscriptPage:
    """A page of the transcript, oldest first; ``next_after`` is null at the end."""
    await _meta_or_404(streams, sk)
    cursor = _log_id(after) if after else "0-0"
    entries = await read_transcript(
        streams, sk, cursor, limit, state.record, state.settings.retry_after_s
    )
    items = [entry_out(e, sk.session_id) for e in entries]
    more = len(entries) == limit
    return TranscriptPage(items=items, next_after=entries[-1].id if more else None)
