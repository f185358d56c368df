"""``GET /v1/sessions/{id}/state``: a session host's last saved snapshot (``ctx.save_state``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from streamward.api.deps import SessionDep, StreamsDep
from streamward.api.problems import ProblemError
from streamward.api.schemas import SessionStateOut
from streamward.core.timefmt import rfc3339

router = APIRouter(prefix="/v1", tags=["sessions"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "state_not_found: the session's host never saved a state"},
    422: {"description": "invalid id"},
    503: {"description": "redis_unavailable (with Retry-After)"},
}


@router.get("/sessions/{session_id}/state", response_model=SessionStateOut, responses=_RESPONSES)
async def session_state(sk: SessionDep, streams: StreamsDep) -> SessionStateOut:
    """The snapshot the session's host saved last, who saved it (fencing token) and when.

    Same permission as the transcript: any caller of the session's project may read it."""
    saved = await streams.read_state(sk)
    if saved is None:
        raise ProblemError(404, "state_not_found", f"session {sk.session_id!r} has no saved state")
    return SessionStateOut(
        session_id=sk.session_id,
        state=saved.value(),
        token=saved.token,
        replica_id=saved.replica_id or None,
        saved_at=rfc3339(saved.saved_ms),
    )
