"""Admin endpoints (admin bearer token): runner heartbeat/ingest over HTTP, locks, replicas."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from streamward.api import replicas
from streamward.api.deps import (
    AdminDep,
    ProjectQuery,
    ReplicaIdPath,
    SessionIdPath,
    StateDep,
    StoreDep,
    StreamsDep,
    mark_changed,
)
from streamward.api.problems import ProblemError
from streamward.api.routes.common import entry_out, lock_out, read_transcript, scan_cursor
from streamward.api.schemas import (
    DrainResult,
    ForceReleaseResult,
    HeartbeatRequest,
    HeartbeatResult,
    LockOut,
    LockPage,
    OwnershipEvent,
    OwnershipHistory,
    ReplicaOut,
    StreamDetachRequest,
    StreamDetachResult,
    TranscriptPage,
)
from streamward.core.timefmt import rfc3339_opt
from streamward.lua.keys import SessionKeys

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

_AUTH_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "no admin bearer token"},
    403: {"description": "wrong admin token"},
    422: {"description": "invalid input"},
}


@router.post(
    "/sessions/streams/heartbeat",
    response_model=HeartbeatResult,
    responses={**_AUTH_RESPONSES, 409: {"description": "replica_lost"}},
)
async def heartbeat(body: HeartbeatRequest, state: StateDep, store: StoreDep) -> HeartbeatResult:
    """Renew a replica's session leases in batches (the same Lua a Python runner uses)."""
    if body.replica_ttl_ms is not None:
        # the replica lease first: when it is lost, no session lease may be renewed
        await store.renew_replica(body.replica_id, body.incarnation, body.replica_ttl_ms)
    pairs = [(state.keys.session(x.project, x.session_id), x.token) for x in body.leases]
    res = await store.renew_many(body.replica_id, body.incarnation, pairs, body.lease_ttl_ms)
    return HeartbeatResult(
        renewed=[sk.session_id for sk in res.renewed],
        lost=[sk.session_id for sk, _ in res.lost],
        reasons={sk.session_id: reason for sk, reason in res.lost},
    )


@router.post(
    "/sessions/streams/detach",
    response_model=StreamDetachResult,
    responses={**_AUTH_RESPONSES, 409: {"description": "not_owner"}},
)
async def stream_detach(
    body: StreamDetachRequest, state: StateDep, store: StoreDep
) -> StreamDetachResult:
    """Owner-checked release of one session lease; ``released`` is false if none was held."""
    sk = state.keys.session(body.project, body.session_id)
    released = await store.release(sk, body.replica_id, body.incarnation, body.token)
    return StreamDetachResult(session_id=body.session_id, released=released)


async def _lock(state: StateDep, sk: SessionKeys) -> LockOut:
    own, meta = await asyncio.gather(state.store.ownership(sk), state.streams.meta(sk))
    return lock_out(sk, own, int(meta.get("transitions") or 0), meta)


@router.get("/locks", response_model=LockPage, responses=_AUTH_RESPONSES)
async def list_locks(
    state: StateDep,
    streams: StreamsDep,
    replica: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9._:-]{1,200}$", description="Only sessions this replica holds."),
    ] = None,
    project: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,200}$", description="Only this project.")
    ] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> LockPage:
    """Session locks: the session index (ZSCAN pages), or one replica's lease index."""
    start = scan_cursor(cursor)
    if replica is not None:
        # the replica's index is a set: page it by offset over the sorted refs
        refs = await streams.replica_sessions(replica)
        if project is not None:
            refs = [r for r in refs if r.startswith(f"{project}/")]
        page = refs[start : start + limit]
        nxt = str(start + limit) if start + limit < len(refs) else None
    else:
        nc, items = await streams.scan_sessions(start, project, count=limit)
        page = [ref for ref, _ in items]
        nxt = str(nc) if nc != 0 else None
    sks = [state.keys.session_ref(ref) for ref in page]
    locks = await asyncio.gather(*[_lock(state, sk) for sk in sks])
    return LockPage(items=list(locks), next_cursor=nxt)


@router.get("/locks/{session_id}", response_model=LockOut, responses=_AUTH_RESPONSES)
async def get_lock(
    session_id: SessionIdPath, state: StateDep, project: ProjectQuery = "default"
) -> LockOut:
    """One session's lock: holder, incarnation, token, times, state (held/orphaned/free)."""
    return await _lock(state, state.keys.session(project, session_id))


@router.post(
    "/locks/{session_id}/release", response_model=ForceReleaseResult, responses=_AUTH_RESPONSES
)
async def force_release(
    session_id: SessionIdPath,
    state: StateDep,
    store: StoreDep,
    streams: StreamsDep,
    project: ProjectQuery = "default",
    reason: Annotated[str, Query(max_length=200)] = "admin",
) -> ForceReleaseResult:
    """Break-glass release: deletes the lease and bumps the epoch, fencing the old owner."""
    sk = state.keys.session(project, session_id)
    before = await _lock(state, sk)
    out = await store.force_release(sk, reason, "force")
    await mark_changed(state, sk)
    # read before re-queueing: once the work is published a runner may own it again at once
    after = await _lock(state, sk)
    if out.old_replica_id:
        # the former owner would only notice at its next write or renewal: stop it now
        await streams.send_mail(out.old_replica_id, "released", sk.ref)
    if await streams.pending(sk) > 0:
        # inputs are waiting and nobody owns the session now: let a runner claim it (if
        # this process dies first, the pending-index sweep re-queues it)
        await streams.publish_work(sk.ref, "force_release")
    return ForceReleaseResult(session_id=session_id, before=before, after=after)


@router.get(
    "/sessions/{session_id}/history", response_model=OwnershipHistory, responses=_AUTH_RESPONSES
)
async def ownership_history(
    session_id: SessionIdPath,
    state: StateDep,
    streams: StreamsDep,
    project: ProjectQuery = "default",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> OwnershipHistory:
    """Who owned the session when, newest first: acquisitions, takeovers, releases and
    force releases (with the operator's reason)."""
    sk = state.keys.session(project, session_id)
    events = [
        OwnershipEvent(
            id=entry_id,
            event=f.get("event", ""),
            replica_id=f.get("replica") or None,
            incarnation=f.get("incarnation") or None,
            token=int(f.get("token") or 0),
            reason=f.get("reason", ""),
            at=rfc3339_opt(f.get("ms")),
        )
        for entry_id, f in await streams.ownership_history(sk, limit)
    ]
    if state.record is not None:  # older events than Redis's last ~200 live in the record
        from streamward.api.record.reads import with_archived_history

        events = await with_archived_history(state.record, sk, events, limit)
    return OwnershipHistory(
        session_id=session_id, project=project, events=events, record=state.record is not None
    )


@router.get(
    "/sessions/{session_id}/transcript",
    response_model=TranscriptPage,
    responses={
        **_AUTH_RESPONSES,
        404: {"description": "no such session"},
        503: {"description": "archive_unavailable"},
    },
)
async def runner_transcript(
    session_id: SessionIdPath,
    state: StateDep,
    streams: StreamsDep,
    project: ProjectQuery = "default",
    after_seq: Annotated[int, Query(ge=0, le=2**62, description="Entries after this seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TranscriptPage:
    """The runner's ``ctx.transcript()`` below Redis's hot tail: the page
    ``GET /v1/sessions/{id}/transcript`` answers (Redis, and the archive below the hot
    tail), for any project, under the runners' admin token."""
    sk = state.keys.session(project, session_id)
    if not await streams.meta(sk):
        raise ProblemError(404, "session_not_found", f"no session {session_id!r}")
    entries = await read_transcript(
        streams, sk, f"{after_seq}-0", limit, state.record, state.settings.retry_after_s
    )
    more = len(entries) == limit
    return TranscriptPage(
        items=[entry_out(e, session_id) for e in entries],
        next_after=entries[-1].id if more else None,
    )


@router.get("/replicas", response_model=list[ReplicaOut], responses=_AUTH_RESPONSES)
async def list_replicas(streams: StreamsDep) -> list[ReplicaOut]:
    """Replicas seen by heartbeat: alive ones and dead ones the watchdog has not forgotten."""
    return await replicas.list_replicas(streams)


@router.post(
    "/replicas/{replica_id}/drain",
    response_model=DrainResult,
    responses={**_AUTH_RESPONSES, 404: {"description": "unknown_replica"}},
)
async def drain_replica(replica_id: ReplicaIdPath, streams: StreamsDep) -> DrainResult:
    """Ask a replica to drain: mark it draining and mail it ``drain`` (it exits when done)."""
    if not await streams.mark_replica_draining(replica_id):
        raise ProblemError(404, "unknown_replica", f"no live replica {replica_id!r}")
    await streams.send_mail(replica_id, "drain")
    return DrainResult(replica_id=replica_id, status="draining")
