"""The session resource: ``POST /v1/sessions``, ``PATCH /v1/sessions/{id}``,
``POST /v1/sessions/{id}/start`` and ``/stop`` (the logic is in ``api.sessionops``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from streamward.api import sessionops
from streamward.api.deps import ProjectDep, SessionDep, StateDep
from streamward.api.problems import ProblemError
from streamward.api.replicas import served_types
from streamward.api.responses import OrjsonResponse
from streamward.api.routes.common import owner_detail
from streamward.api.schemas import SessionOut
from streamward.api.sessionschemas import (
    SessionControl,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
)
from streamward.api.sessionview import session_out
from streamward.lua.keys import SessionKeys

router = APIRouter(prefix="/v1", tags=["sessions"])

_COMMON: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "session_not_found"},
    422: {"description": "invalid id or body"},
    503: {"description": "redis_unavailable (with Retry-After)"},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[!-~]{1,200}$",
        description="A repeat with the same key answers 200 with the same session (and run).",
    ),
]


async def _out(state: StateDep, sk: SessionKeys) -> SessionOut:
    out = await session_out(state.store, state.streams, sk)
    if out is None:  # deleted between the write and this read
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    return out


@router.post(
    "/sessions",
    response_model=SessionCreated,
    status_code=201,
    responses={
        **_COMMON,
        200: {"model": SessionCreated, "description": "an idempotent repeat"},
        409: {"description": "session_exists / type_mismatch"},
        413: {"description": "metadata_too_large / input_too_large / body_too_large"},
    },
)
async def create_session(
    body: SessionCreate,
    state: StateDep,
    project: ProjectDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a session (id optional), with title, metadata, type and an optional first
    input (run like a detached invoke: ``run`` holds its answer)."""
    sk, created, run = await sessionops.create(state, project, body, idempotency_key)
    out = SessionCreated(**(await _out(state, sk)).model_dump(), run=run)
    return OrjsonResponse(out.model_dump(), status_code=201 if created else 200)


@router.patch(
    "/sessions/{session_id}",
    response_model=SessionOut,
    responses={
        **_COMMON,
        409: {"description": "session_retired / update_conflict"},
        413: {"description": "metadata_too_large"},
    },
)
async def update_session(body: SessionUpdate, sk: SessionDep, state: StateDep) -> SessionOut:
    """Merge-patch title and metadata (RFC 7396); attached streams see ``session.updated``."""
    await sessionops.update(state, sk, body)
    return await _out(state, sk)


@router.post(
    "/sessions/{session_id}/start",
    response_model=SessionControl,
    responses={
        **_COMMON,
        202: {"model": SessionControl, "description": "starting: no owner within the timeout"},
        409: {"description": "session_retired"},
    },
)
async def start_session(sk: SessionDep, state: StateDep) -> Response:
    """Make sure an owner holds the session and has activated it; answers with the owner."""
    ok, own, session_type = await sessionops.start(state, sk)
    if ok:
        out = SessionControl(session_id=sk.session_id, status="started", owner=owner_detail(own))
        return OrjsonResponse(out.model_dump(), status_code=200)
    waiting = None if session_type in await served_types(state.streams) else session_type
    out = SessionControl(session_id=sk.session_id, status="starting", waiting_for_type=waiting)
    return OrjsonResponse(out.model_dump(), status_code=202)


@router.post(
    "/sessions/{session_id}/stop",
    response_model=SessionControl,
    responses={
        **_COMMON,
        202: {"model": SessionControl, "description": "stopping: not released within the timeout"},
        409: {"description": "run_active / inputs_pending"},
    },
)
async def stop_session(
    sk: SessionDep,
    state: StateDep,
    cancel: Annotated[
        bool, Query(description="Cancel the active run first (else 409 run_active).")
    ] = False,
) -> Response:
    """Passivate now: the owner runs its host's passivate (reason ``stopped``), releases."""
    ok, own = await sessionops.stop(state, sk, cancel)
    owner = owner_detail(own) if own is not None else None
    out = SessionControl(
        session_id=sk.session_id, status="stopped" if ok else "stopping", owner=owner
    )
    return OrjsonResponse(out.model_dump(), status_code=200 if ok else 202)
