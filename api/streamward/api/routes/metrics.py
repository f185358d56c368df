"""``GET /metrics``: the API process's Prometheus metrics, plus fleet gauges read from Redis.

No token, like every Prometheus endpoint: it exposes no session, project or replica names.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.responses import Response

from streamward.api import replicas
from streamward.api.deps import AppState, quotas_of
from streamward.api.metrics import ApiMetrics
from streamward.api.quotas import known_projects
from streamward.lua.archive import ArchiveCalls

log = logging.getLogger("streamward.metrics")

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    include_in_schema=True,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of this API process (plus fleet gauges read from Redis)."""
    metrics: ApiMetrics = request.app.state.metrics
    state: AppState | None = getattr(request.app.state, "sw", None)
    if state is not None:
        metrics.start_local_share.set(state.starts.local_share)
        try:
            backlog, by_state = await asyncio.wait_for(
                asyncio.gather(state.streams.work_backlog_by_type(), _replica_states(state)),
                timeout=2.0,
            )
            metrics.work_backlog.set(sum(backlog.values()))
            for session_type, n in backlog.items():
                metrics.work_backlog_by_type.labels(session_type).set(n)
            for name in ("ready", "draining", "dead"):
                metrics.replicas.labels(name).set(by_state.get(name, 0))
            if state.outbox is not None:
                depth = await asyncio.wait_for(state.outbox.depth(), timeout=2.0)
                metrics.callback_outbox_depth.set(depth)
            if metrics.quota_by_project:
                await asyncio.wait_for(quota_gauges(state, metrics), timeout=2.0)
            if state.record is not None:
                lag_s, in_set = await asyncio.wait_for(archive_progress(state), timeout=2.0)
                metrics.archive_lag.set(lag_s)
                metrics.archive_backlog.set(in_set)
            metrics.redis_up.set(1)
        except (RedisError, TimeoutError) as exc:
            # a scrape must still answer: the process metrics are valid without Redis
            log.warning("metrics: fleet gauges unavailable: %s", exc)
            metrics.redis_up.set(0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def quota_gauges(state: AppState, metrics: ApiMetrics) -> None:
    """Per project the settings name (bounded by configuration): live sessions, the limits,
    and the invoke bucket's tokens when it has a rate limit."""
    quotas = quotas_of(state)
    live_g, limit_g, tokens_g = (
        metrics.project_live_sessions,
        metrics.project_limit,
        metrics.project_invoke_tokens,
    )
    assert live_g is not None and limit_g is not None and tokens_g is not None
    for project in known_projects(state.settings):
        lim = quotas.limits(project)
        if lim.max_live:  # counted only under a limit
            live_g.labels(project).set(await quotas.calls.live_sessions(project))
        for name, value in (
            ("max_live_sessions", lim.max_live),
            ("invokes_per_s", lim.rate_per_s),
            ("invokes_burst", lim.burst),
            ("max_pending_inputs", lim.max_pending),
        ):
            limit_g.labels(project, name).set(value)
        if lim.rate_per_s > 0:
            bucket = await quotas.calls.bucket(project, lim.rate_per_s, lim.burst)
            tokens_g.labels(project).set(bucket.tokens)


async def archive_progress(state: AppState) -> tuple[float, int]:
    """(lag s, sessions in the work set) of the archiver, read from Redis."""
    calls = ArchiveCalls(state.client, state.keys)
    now = await calls.now_ms()
    oldest = await calls.oldest_due_ms(now)
    lag_s = 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)
    return lag_s, await calls.backlog()


async def _replica_states(state: AppState) -> collections.Counter[str]:
    return collections.Counter(r.state for r in await replicas.list_replicas(state.streams))
