"""``GET /v1/runs/{run_id}/deliveries``: a run's signed callback deliveries and attempts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from streamward.api.deps import ID_PATTERN, ProjectDep, StateDep
from streamward.api.problems import ProblemError
from streamward.api.schemas import DeliveryAttemptOut, DeliveryOut, RunDeliveries
from streamward.core.timefmt import rfc3339, rfc3339_opt
from streamward.lua.outbox import Delivery

router = APIRouter(prefix="/v1", tags=["runs"])

RunIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Run id.")
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "run_not_found: no callback was given for this run in your project"},
    422: {"description": "invalid id"},
    503: {"description": "redis_unavailable (with Retry-After)"},
}


def _out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        delivery_id=d.id,
        event=d.event,
        seq=d.seq,
        url=d.url,
        state=d.state,  # type: ignore[arg-type]
        attempts=d.attempts,
        attempt_log=[
            DeliveryAttemptOut(at=rfc3339(a.at_ms), status_code=a.status_code, error=a.error)
            for a in d.log
        ],
        created_at=rfc3339(d.created_ms),
        next_retry_at=rfc3339_opt(d.next_ms),
        delivered_at=rfc3339_opt(d.done_ms) if d.state == "delivered" else None,
        dead_at=rfc3339_opt(d.done_ms) if d.state == "dead" else None,
    )


@router.get("/runs/{run_id}/deliveries", response_model=RunDeliveries, responses=_RESPONSES)
async def run_deliveries(run_id: RunIdPath, project: ProjectDep, state: StateDep) -> RunDeliveries:
    """The run's callback deliveries: state, attempts (time, status code or error), next retry.
    A run invoked without a callback, or another project's, is 404."""
    outbox = state.outbox
    cb = await outbox.run_callback(run_id) if outbox is not None else None
    if outbox is None or cb is None or cb.project != project:
        raise ProblemError(404, "run_not_found", f"no callback deliveries for run {run_id!r}")
    items = [_out(d) for d in await outbox.run_deliveries(run_id) if d.project == project]
    return RunDeliveries(
        run_id=run_id, session_id=cb.session_id, url=cb.url, events=list(cb.events), items=items
    )
