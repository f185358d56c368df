"""Prometheus metrics of the API process: HTTP, invoke latency, ingest, Redis scripts, backlog.

The collectors and the HTTP middleware; ``GET /metrics`` itself is in api/routes/health.py.

Names are prefixed ``streamward_``, in base units (seconds), and never labelled by session
(a label per session would grow without bound). Each app owns a registry (not the global
one) so tests can build many apps in one process. ``GET /metrics`` needs no token, like
every Prometheus endpoint; it exposes no session, project or replica names (projects only
with ``QUOTA_METRICS_BY_PROJECT``, and only the configured ones).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamward.core.metrics import (
    AutoPipelineMetrics,
    ScriptTimer,
    add_script_timer,
    build_info,
    script_histogram,
)

INVOKE_ROUTE = "/v1/sessions/{session_id}/invoke"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ApiMetrics:
    """The API's collectors, in a registry of their own."""

    def __init__(self, *, quota_by_project: bool = False) -> None:
        self.registry = r = CollectorRegistry()
        self.autopipeline = AutoPipelineMetrics(r)
        self.http_requests = Counter(
            "streamward_api_http_requests",
            "HTTP requests answered, by route template and status class.",
            ["method", "route", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            "streamward_api_http_request_duration_seconds",
            "Time to the response headers (a stream's lifetime is not counted), by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.invoke_duration = Histogram(
            "streamward_api_invoke_duration_seconds",
            "Invoke latency: detached = until the 202 (run started or queued); "
            "stream = until the response headers.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_entries = Counter(
            "streamward_api_ingest_entries",
            "Transcript entries written through admin ingest.",
            registry=r,
        )
        self.ingest_duplicates = Counter(
            "streamward_api_ingest_duplicates",
            "Ingested entries already present (replays), not written again.",
            registry=r,
        )
        start_waits = Counter(
            "streamward_api_start_waits",
            "Detached invokes that waited for their run's start, by how the wait ended: "
            "memory (this process ingested the start), log (the session log tail saw it), "
            "queued (start timeout).",
            ["how"],
            registry=r,
        )
        # children resolved once: labels() costs a lookup per call on the hottest path
        self.start_wait = {how: start_waits.labels(how) for how in ("memory", "log", "queued")}
        self.start_local_share = Gauge(
            "streamward_api_start_local_share",
            "Share of recent run starts this process ingested itself among those its detached "
            "invokes waited for (>= 0.9: such waits are served from memory first).",
            registry=r,
        )
        self.script_duration = script_histogram(r)
        self.work_backlog = Gauge(
            "streamward_work_backlog",
            "Sessions waiting for an owner on the work streams, every type (read at scrape time).",
            registry=r,
        )
        self.work_backlog_by_type = Gauge(
            "streamward_work_backlog_by_type",
            "Sessions waiting for an owner, per session type (its work stream; scrape time).",
            ["type"],
            registry=r,
        )
        self.replicas = Gauge(
            "streamward_replicas",
            "Replicas known to the fleet by state (read at scrape time).",
            ["state"],
            registry=r,
        )
        self.redis_up = Gauge(
            "streamward_api_redis_up",
            "1 when Redis answered the last scrape's queries.",
            registry=r,
        )
        # with the record configured (docs/record.md): the archiver's progress, fleet-wide
        self.archive_lag = Gauge(
            "streamward_archive_lag_seconds",
            "How long the longest-due session has waited for an archive pass (read at scrape).",
            registry=r,
        )
        self.archive_backlog = Gauge(
            "streamward_archive_backlog_sessions",
            "Sessions in the archiver's work set (read at scrape time).",
            registry=r,
        )
        # signed completion callbacks (api/callbackworker.py): this process's attempts
        callback_attempts = Counter(
            "streamward_api_callback_attempts",
            "Callback delivery attempts this process made, by outcome: delivered (2xx) or "
            "failed (network error, timeout, non-2xx, refused address; retried until dead).",
            ["outcome"],
            registry=r,
        )
        self.callback_attempts = callback_attempts
        for outcome in ("delivered", "failed"):
            callback_attempts.labels(outcome)
        self.callback_dead = Counter(
            "streamward_api_callback_dead",
            "Callback deliveries this process marked dead (the retry window ended).",
            registry=r,
        )
        self.callback_outbox_depth = Gauge(
            "streamward_callback_outbox_depth",
            "Callback deliveries waiting to be delivered, fleet-wide (read at scrape time).",
            registry=r,
        )
        # quotas (api/quotas.py). /metrics needs no token and names no project by default:
        # per-project series (bounded: only projects the settings name, others "other")
        # only with QUOTA_METRICS_BY_PROJECT; GET /admin/projects/{p}/usage has them anyway
        self.quota_by_project = quota_by_project
        self.quota_rejections = Counter(
            "streamward_api_quota_rejections",
            "Invokes and routed events refused by a quota (429), by reason "
            "(inbox_full, live_sessions, invokes_per_s)"
            + (" and project." if quota_by_project else "."),
            ["reason", "project"] if quota_by_project else ["reason"],
            registry=r,
        )
        self.project_live_sessions: Gauge | None = None
        self.project_limit: Gauge | None = None
        self.project_invoke_tokens: Gauge | None = None
        if quota_by_project:
            self.project_live_sessions = Gauge(
                "streamward_project_live_sessions",
                "Live sessions counted against the project's limit (read at scrape time).",
                ["project"],
                registry=r,
            )
            self.project_limit = Gauge(
                "streamward_project_quota_limit",
                "A project's configured limits (0 = unlimited): max_live_sessions, "
                "invokes_per_s, invokes_burst, max_pending_inputs.",
                ["project", "limit"],
                registry=r,
            )
            self.project_invoke_tokens = Gauge(
                "streamward_project_invoke_tokens",
                "Tokens left in the project's invokes-per-second bucket (read at scrape "
                "time; only for projects with a rate limit).",
                ["project"],
                registry=r,
            )
        build_info(r, "api")
        self.script_timer = ScriptTimer(self.script_duration)
        add_script_timer(self.script_timer)

    def observe_ingest(self, accepted: int, duplicates: int) -> None:
        self.ingest_entries.inc(accepted)
        self.ingest_duplicates.inc(duplicates)


RouteIndex = list[tuple[re.Pattern[str], str, frozenset[str]]]
# one request's series: its count, its latency, and the invoke latency (invoke routes only)
_Series = tuple[Any, Any, Any]


def route_index(routers: Iterable[APIRouter]) -> RouteIndex:
    """(path regex, template, methods) of every route: to name requests answered early."""
    out: RouteIndex = []
    for r in routers:
        for route in r.routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                regex, _, _ = compile_path(path)
                out.append((regex, path, frozenset(getattr(route, "methods", None) or ())))
    return out


def _route_of(scope: Scope, index: RouteIndex) -> str:
    """The matched route's template (``/v1/sessions/{session_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # answered before routing ran (e.g. the body limit): find the template ourselves
    found = None
    for regex, template, methods in index:
        if regex.match(scope["path"]):
            if scope["method"] in methods:
                return template
            found = found or template
    # one label for every unknown path, so scanners cannot grow the series
    return found or "unmatched"


class HttpMetrics:
    """ASGI middleware: requests by route and status class, time to headers, invoke latency."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: RouteIndex) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        # (method, route, status) -> its series, resolved once: labels() costs a lookup and
        # a lock per call, on every request (bounded: routes x methods x statuses)
        self._series: dict[tuple[str, str, int], _Series] = {}

    def _series_of(self, method: str, route: str, status: int) -> _Series:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            m = self.metrics
            invoke = None
            if route == INVOKE_ROUTE and status in (200, 202):
                # 202 is the detached answer, 200 the start of an attached stream
                invoke = m.invoke_duration.labels("detached" if status == 202 else "stream")
            series = self._series[key] = (
                m.http_requests.labels(method, route, f"{status // 100}xx"),
                m.http_duration.labels(method, route),
                invoke,
            )
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            elapsed = time.perf_counter() - t0
            count, duration, invoke = self._series_of(
                scope["method"], _route_of(scope, self.routes), status
            )
            count.inc()
            duration.observe(elapsed)
            if invoke is not None:
                invoke.observe(elapsed)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not recorded:
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            if not recorded:
                record(500)  # what the server will answer for an exception escaping the app
            raise
