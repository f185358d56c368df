"""Process and readiness probes (no auth: kubelets call them)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from redis.exceptions import RedisError

from streamward.api.deps import StateDep, ensure_ready
from streamward.api.problems import ProblemError
from streamward.lua.probe import ProbeError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/livez", response_model=Health)
async def livez() -> Health:
    """The process is up (no Redis check: a Redis outage must not restart every pod)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready"}})
async def readyz(state: StateDep) -> Health:
    """Redis answers, can run streamward (capability probe) and the scripts are loaded."""
    try:
        await ensure_ready(state)
    except ProbeError as exc:
        raise ProblemError(
            503,
            "not_ready",
            str(exc),
            headers={"Retry-After": str(state.settings.retry_after_s)},
        ) from exc
    except RedisError as exc:
        raise ProblemError(
            503,
            "not_ready",
            f"redis unreachable: {type(exc).__name__}",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        ) from exc
    return Health(status="ready")
