"""Process and readiness probes (no auth: kubelets call them)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from redis.exceptions import RedisError

from streamward.api.deps import AppState, StateDep, ensure_ready
from streamward.api.problems import ProblemError
from streamward.api.routes.metrics import archive_progress
from streamward.lua.errors import write_refusal
from streamward.lua.probe import ProbeError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(Health):
    # with the record configured: how long the longest-due session has waited for the
    # archiver, sessions in its work set, and the target lag (reported; never not-ready)
    archive_lag_s: float | None = None
    archive_backlog: int | None = None
    archive_lag_target_s: float | None = None


@router.get("/livez", response_model=Health)
async def livez() -> Health:
    """The process is up (no Redis check: a Redis outage must not restart every pod)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"description": "not ready"}},
)
async def readyz(state: StateDep) -> Readiness:
    """Redis answers, can run streamward (capability probe), the scripts are loaded and
    Redis accepts writes."""
    try:
        await ensure_ready(state)
        await probe_write(state)
    except ProbeError as exc:
        raise ProblemError(
            503,
            "not_ready",
            str(exc),
            headers={"Retry-After": str(state.settings.retry_after_s)},
        ) from exc
    except RedisError as exc:
        reason = write_refusal(exc)
        if reason is not None:
            raise ProblemError(
                503,
                "not_ready",
                f"redis refuses writes: {reason}",
                headers={"Retry-After": str(state.settings.retry_after_s)},
                reason=reason,
            ) from exc
        raise ProblemError(
            503,
            "not_ready",
            f"redis unreachable: {type(exc).__name__}",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        ) from exc
    if state.record is None:
        return Readiness(status="ready")
    try:
        lag_s, in_set = await archive_progress(state)
    except RedisError:  # Redis answered the probes just now: ready, without the detail
        return Readiness(status="ready")
    return Readiness(
        status="ready",
        archive_lag_s=lag_s,
        archive_backlog=in_set,
        archive_lag_target_s=state.settings.archive_lag_target_s,
    )


# TTL of the write probe's key: long enough to outlive a probe period, so the key costs one
# small string at most, and no cleanup is needed
PROBE_TTL_MS = 60_000


async def probe_write(state: AppState) -> None:
    """One tiny SET with a TTL: refused exactly when Redis refuses writes (maxmemory under
    noeviction, read-only, failing saves, min-replicas), whatever the cause. Cheaper and more
    exact than comparing INFO memory to maxmemory (which misses the other refusals)."""
    await state.client.set(f"{state.keys.prefix}:readyz", b"1", px=PROBE_TTL_MS)
