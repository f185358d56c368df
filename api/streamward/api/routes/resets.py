"""``POST /v1/sessions/{id}/reset``: end a session's generation, routed or not.

Routed: the key's generation gets a pending manual reset, taken by its first event once
the generation is quiet (the same rule as every reset: never under a running run).
Not routed (a fixed id the caller keeps invoking): the id stays, its generation number
goes up with ``reset_reason: manual``, its host snapshot is dropped and its owner fenced,
so the next activation starts fresh; refused with
409 ``session_busy`` while it has a run or pending inputs. docs/routing.md, "Resets".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from streamward.api.deps import RoutesDep, SessionDep, StoreDep, StreamsDep
from streamward.api.problems import ProblemError
from streamward.api.schemas import SessionResetResult

router = APIRouter(prefix="/v1", tags=["sessions"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "session_not_found"},
    409: {"description": "session_busy / not_current_generation / session_retired"},
}


@router.post(
    "/sessions/{session_id}/reset",
    response_model=SessionResetResult,
    status_code=202,
    responses=_ERRORS,
)
async def reset_session(
    sk: SessionDep, streams: StreamsDep, store: StoreDep, routes: RoutesDep
) -> SessionResetResult:
    """End the session's current generation (see the module docstring for the two kinds)."""
    meta = await streams.meta(sk)
    if not meta:
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    if meta.get("status") in ("expired", "deleted", "dead"):
        raise ProblemError(409, "session_retired", "this generation has already ended")
    route_id, key = meta.get("route_id"), meta.get("session_key")
    if route_id and key:
        current = (await routes.binding(sk.project, route_id, key)).get("session_id")
        if current != sk.session_id:
            raise ProblemError(
                409, "not_current_generation", f"the key's current session is {current!r}"
            )
        await routes.mark_reset(sk.project, route_id, key, "manual")
        return SessionResetResult(session_id=sk.session_id, status="reset_pending")
    if await routes.generation_state(sk) == "busy":
        raise ProblemError(
            409, "session_busy", "a reset never happens under a running run: retry when idle"
        )
    # fence the owner: its loaded handler holds the old generation's memory
    if (await store.ownership(sk)).held:
        released = await store.force_release(sk, "reset", "force")
        if released.old_replica_id:
            await streams.send_mail(released.old_replica_id, "released", sk.ref)
    # the session host's snapshot belongs to the old generation (saveState is fenced above)
    await streams.client.delete(sk.state)
    generation = int(meta.get("generation") or "1") + 1
    last_seq = await streams.last_seq(sk)
    await streams.set_meta(
        sk, generation=generation, reset_reason="manual", reset_after_seq=last_seq
    )
    await streams.touch_session(sk)  # a change through the API: recent activity in listings
    return SessionResetResult(session_id=sk.session_id, status="reset", generation=generation)
