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
from streamward.api.deps import AppState
from streamward.api.metrics import ApiMetrics
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


async def archive_progress(state: AppState) -> tuple[float, int]:
    """(lag s, sessions in the work set) of the archiver, read from Redis."""
    calls = ArchiveCalls(state.client, state.keys)
    now = await calls.now_ms()
    oldest = await calls.oldest_due_ms(now)
    lag_s = 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)
    return lag_s, await calls.backlog()


async def _replica_states(state: AppState) -> collections.Counter[str]:
    return collections.Counter(r.state for r in await replicas.list_replicas(state.streams))
