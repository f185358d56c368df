"""Operator endpoints: one session's ownership in detail (any project), and the live page."""

from __future__ import annotations

import asyncio
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse

from streamward.api.deps import AdminDep, ProjectQuery, SessionIdPath, StateDep
from streamward.api.problems import ProblemError
from streamward.api.replicas import replica_out
from streamward.api.routes.common import entry_out, lock_out, rfc3339_opt
from streamward.api.schemas import LockDetail, PendingInput, ReplicaOut, RunOut
from streamward.core.timefmt import rfc3339

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
# the page itself holds no data (it fetches with the token the operator types in), so
# loading it needs no token: a browser navigation cannot send an Authorization header
page_router = APIRouter(tags=["admin"])

_AUTH: dict[int | str, dict[str, str]] = {
    401: {"description": "no admin bearer token"},
    403: {"description": "wrong admin token"},
    404: {"description": "session_not_found"},
}


@router.get("/locks/{session_id}/detail", response_model=LockDetail, responses=_AUTH)
async def lock_detail(
    session_id: SessionIdPath,
    state: StateDep,
    project: ProjectQuery = "default",
    entries: Annotated[int, Query(ge=0, le=100, description="Last log entries to include.")] = 10,
) -> LockDetail:
    """Lock, holder replica liveness, pending inputs, active run and the log's last entries."""
    sk = state.keys.session(project, session_id)
    streams, store = state.streams, state.store
    own, (meta, pending, attached), inbox, tail, now = await asyncio.gather(
        store.ownership(sk),
        streams.session_overview(sk),
        streams.read_inbox(sk, count=20),
        streams.read_log_tail(sk, entries) if entries else asyncio.sleep(0, result=[]),
        streams.now_ms(),
    )
    if not meta and not own.held and not tail:
        raise ProblemError(
            404, "session_not_found", f"no session {session_id!r} in project {project!r}"
        )
    holder: ReplicaOut | None = None
    if own.replica_id is not None:
        holder = replica_out(await streams.replica_info(own.replica_id))
    active: RunOut | None = None
    active_id = meta.get("active_run_id") or None
    if active_id:
        rs = await streams.run_state(sk, active_id)
        active = RunOut(
            run_id=active_id,
            status=rs.status if rs else "pending",
            token=rs.token if rs else None,
            replica_id=rs.replica_id if rs else None,
            attempt=rs.attempt if rs else None,
            updated_at=rfc3339_opt(rs.updated_ms) if rs else None,
        )
    return LockDetail(
        lock=lock_out(sk, own, int(meta.get("transitions") or 0), meta),
        status=meta.get("status") or None,
        holder_replica=holder,
        pending=pending,
        pending_inputs=[
            PendingInput(
                id=i.id,
                run_id=i.run_id,
                source=i.source,
                multitask=i.multitask,
                enqueued_at=rfc3339_opt(i.enqueued_ms or None),
            )
            for i in inbox
        ],
        attached=attached,
        active_run=active,
        last_entries=[entry_out(e, session_id) for e in tail],
        server_time=rfc3339(now),
    )


@cache
def _page() -> str:
    return resources.files("streamward.api").joinpath("static/ui.html").read_text(encoding="utf-8")


# inline script and style only, fetches only to this origin, never framed: the page holds
# the admin token, so nothing else may run in it or read it
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@page_router.get("/admin/ui", response_class=HTMLResponse, include_in_schema=True)
async def ui() -> HTMLResponse:
    """The live ownership page (static; asks for the admin token once per browser tab)."""
    return HTMLResponse(
        _page(),
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
