"""``GET /admin/projects/{project}/usage``: a project's quotas, their limits and current use."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path

from streamward.api.deps import ID_PATTERN, AdminDep, StateDep, quotas_of
from streamward.api.quotas import REASONS, Quotas
from streamward.core.contract import Model

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

ProjectPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Project.")
]


class InvokeRate(Model):
    per_s: float  # 0 = no rate limit
    burst: int
    tokens_left: float | None  # None without a rate limit


class ProjectUsage(Model):
    project: str
    # sessions counted live (created or revived, not deleted or retired); counted only while
    # the project has a live-sessions limit (None without one)
    live_sessions: int | None
    max_live_sessions: int  # 0 = unlimited
    invokes: InvokeRate
    max_pending_inputs: int  # per session; 0 = unlimited
    # quota refusals answered by this API process since it started, by reason (Prometheus's
    # streamward_api_quota_rejections sums them over the fleet)
    rejections: dict[str, int]


@router.get(
    "/projects/{project}/usage",
    response_model=ProjectUsage,
    responses={401: {"description": "missing_token"}, 403: {"description": "invalid_token"}},
)
async def project_usage(project: ProjectPath, state: StateDep) -> ProjectUsage:
    """Live sessions against their limit, the invoke bucket, the per-session inbox limit
    and this process's recent refusals (a project with no activity reads as unused)."""
    quotas = quotas_of(state)
    lim = quotas.limits(project)
    live, bucket = await asyncio.gather(
        quotas.calls.live_sessions(project) if lim.max_live else asyncio.sleep(0, result=None),
        quotas.calls.bucket(project, lim.rate_per_s, lim.burst),
    )
    rate = lim.rate_per_s
    return ProjectUsage(
        project=project,
        live_sessions=live,
        max_live_sessions=lim.max_live,
        invokes=InvokeRate(
            per_s=rate, burst=lim.burst, tokens_left=round(bucket.tokens, 3) if rate else None
        ),
        max_pending_inputs=lim.max_pending,
        rejections=rejections(quotas, project),
    )


def rejections(quotas: Quotas, project: str) -> dict[str, int]:
    """This process's refusal counts for ``project``, by reason."""
    return {reason: quotas.rejections[(project, reason)] for reason in REASONS}
