"""The FastAPI application: factory, lifespan (Redis + scripts), body limit, ``serve()``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.types import ASGIApp

from streamward.api.audit import IngestAudit
from streamward.api.bodylimit import BodyLimit
from streamward.api.callbackworker import CallbackWorker
from streamward.api.config import Settings, get_settings
from streamward.api.deps import AppState, ensure_ready
from streamward.api.docspages import install_docs
from streamward.api.fastinvoke import FastInvoke
from streamward.api.metrics import ApiMetrics, HttpMetrics, route_index
from streamward.api.problems import install_handlers, install_refusal_handlers
from streamward.api.responses import OrjsonResponse
from streamward.api.routes import (
    admin,
    events,
    health,
    ingest,
    manage,
    ops,
    resets,
    runs,
    sessions,
    sources,
    state,
    usage,
)
from streamward.api.routes.metrics import router as metrics_router
from streamward.api.serving import AdminOnly, auth_refusal, uvicorn_options
from streamward.api.startfeed import StartFeed
from streamward.api.tokens import TokenConfigError, build_table, declare_scopes
from streamward.api.tracing import FASTAPI_TELEMETRY, TraceContext
from streamward.core import tracing
from streamward.core.logs import RequestContext, setup_logging
from streamward.lua import autopipe
from streamward.lua.client import RedisClient, connect_from_config
from streamward.lua.keys import Keys
from streamward.lua.outbox import Outbox
from streamward.lua.probe import ProbeError
from streamward.lua.routes import RouteStore
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

log = logging.getLogger("streamward.api")
startup_log = logging.getLogger("streamward.api.startup")
# young collections after this many net new GC-tracked objects; Python's default is 700.
# Measured under load (perf): the API spent 13% of its CPU in the GC with the default, 4-6%
# at 7000, ~1% at 30000; a young collection then pauses for a few ms at most.
GC_GEN0_THRESHOLD = 30_000


def make_redis(settings: Settings, metrics: ApiMetrics | None = None) -> RedisClient:
    """One client per process (standalone, Sentinel or Cluster: ``STREAMWARD_REDIS_MODE``); a
    blocking pool so a burst of streams waits instead of failing (not on Cluster)."""
    client = connect_from_config(
        settings.redis_config(),
        max_connections=settings.redis_max_connections,
        blocking=True,
        pool_timeout_s=settings.redis_pool_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=2.0,
    )
    if settings.redis_autopipeline:  # concurrent invokes' enqueues share a round trip
        ap = autopipe.enable(client)
        if metrics is not None:
            metrics.autopipeline.ap = ap
    return client


async def open_record_or_refuse(url: str) -> Any:
    """The record's engine. An unmigrated schema refuses the start (one clear line); an
    unreachable database does not: Redis serves, archive reads answer 503 until it is back."""
    try:
        from streamward.api.record import migrate
        from streamward.api.record.archiver import DB_DOWN
        from streamward.api.record.db import make_engine
    except ImportError as exc:  # STREAMWARD_DATABASE_URL set, the db extra missing
        raise RuntimeError(
            "STREAMWARD_DATABASE_URL is set but the record needs the db extra: "
            "pip install 'streamward[db]'"
        ) from exc

    engine = make_engine(url)
    try:
        await migrate.check_schema(engine)
    except migrate.SchemaNotReady as exc:
        log.error("%s", exc)
        await engine.dispose()
        raise
    except DB_DOWN as exc:
        log.warning("database not reachable at start: %s", exc)
    return engine


async def _backfill_indexes(streams: Streams) -> None:
    for attempt in range(60):  # Redis may come up after the API: try for about a minute
        try:
            n = await streams.backfill_project_indexes()
        except RedisError as exc:
            log.debug("index backfill: redis not ready (%s), attempt %d", exc, attempt)
            await asyncio.sleep(1.0)
            continue
        if n:
            log.info("indexed %d sessions written before the project listing indexes", n)
        return


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the environment (``STREAMWARD_*``)."""
    settings = settings or get_settings()
    metrics = ApiMetrics(quota_by_project=settings.quota_metrics_by_project)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_redis(settings, metrics)
        keys = Keys(settings.key_prefix)
        store = LeaseStore(client, keys)
        state = AppState(
            settings=settings,
            client=client,
            keys=keys,
            store=store,
            streams=Streams(client, keys),
            routes=RouteStore(client, keys),
            tokens=tokens,
            metrics=metrics,
            audit=IngestAudit(settings.ingest_audit_path) if settings.ingest_audit_path else None,
            outbox=Outbox(client, keys, store.scripts),
        )
        app.state.sw = state
        if settings.database_url:
            state.record = await open_record_or_refuse(settings.database_url)
        try:
            await ensure_ready(state)
        except ProbeError as exc:
            # Redis answers but cannot run streamward (no scripting, wrong mode): fail fast
            log.error("%s", exc)
            await client.aclose()
            raise
        except RedisError as exc:
            # start anyway: /livez answers and /readyz reports 503 until Redis is back
            log.warning("redis not reachable at start (%s): %s", settings.redis_mode, exc)
        # sessions indexed before the per-project listing indexes existed: copied once (a
        # marker key remembers it), in the background so startup does not wait for it
        backfill = asyncio.create_task(_backfill_indexes(state.streams))
        # detached invokes hear their runs' starts from the owners (not on Cluster)
        feed = None if store.cluster else StartFeed(client, keys, state.starts)
        app.state.start_feed = feed
        if feed is not None:
            feed.start()
        worker = None
        if settings.callback_worker and state.outbox is not None:
            # any API process sends any delivery: the outbox and its claims live in Redis
            worker = CallbackWorker(state.outbox, settings, metrics)
            worker.start()
        try:
            yield
        finally:
            backfill.cancel()
            await asyncio.gather(backfill, return_exceptions=True)
            if worker is not None:
                await worker.stop()
            if feed is not None:
                await feed.stop()
            await client.aclose()
            if state.audit is not None:
                state.audit.close()
            if state.record is not None:
                await state.record.dispose()

    # before the app is served: a bad token file refuses the app, not each request
    tokens = build_table(settings)
    app = FastAPI(
        title="streamward",
        version="0.1.0",
        summary="Session stream ownership: invoke, stream, inspect.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,  # served without a CDN: install_docs, after the API's routes
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY,  # FastAPI's own spans off: api/tracing.py
    )
    app.state.metrics = metrics
    install_handlers(app, settings.retry_after_s)
    install_refusal_handlers(app, settings.retry_after_s)
    # matched in this order, route by route (no two routers share a path): the hot paths
    # (invoke, the runners' ingest) first, so routing them tries one or two routes, not twenty
    routers = [
        sessions.invoke_router,
        ingest.ingest_router,
        health.router,
        metrics_router,
        sessions.router,
        state.router,
        resets.router,
        manage.router,
        runs.router,
        admin.router,
        events.router,
        events.admin_router,
        sources.router,
        ops.router,
        ops.page_router,
        usage.router,
    ]
    for r in routers:
        app.include_router(r)
    declare_scopes(app, routers)
    install_docs(app)
    if tracing.TRACING_ON:  # innermost: the caller's trace context, for the routes' spans
        app.add_middleware(TraceContext)
    # innermost: the plain detached invoke and the runners' batch ingest, served without
    # FastAPI's routing machinery
    app.add_middleware(
        FastInvoke,
        api=app,
        routes=sessions.invoke_router.routes,
        ingest_routes=ingest.ingest_router.routes,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # outermost: counted and logged even when the body limit answers before routing
    app.add_middleware(HttpMetrics, metrics=metrics, routes=route_index(routers))
    app.add_middleware(RequestContext)
    return app


def freeze_heap() -> None:
    """Move everything allocated so far (the imported framework, the app's routes and models:
    ~80k objects) out of the cyclic GC's reach. They live as long as the process, yet every
    full collection would traverse them again: measured, that was a quarter of the API's
    CPU under load, in pauses of tens of ms that stall every request in flight."""
    gc.collect()
    gc.freeze()
    # young collections: every 700 allocations by default, each one traversing every young
    # object still alive, i.e. those of the requests in flight; rarer ones cost less in all
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def serve(
    host: str | None = None,
    port: int | None = None,
    redis_url: str | None = None,
    *,
    admin_port: int | None = None,
    insecure_no_auth: bool | None = None,
) -> int:
    """Run the API under uvicorn (the ``streamward api`` command); returns an exit code
    (2: refused to start, see ``serving.auth_refusal``)."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if redis_url is not None:
        overrides["redis_url"] = redis_url
    if admin_port is not None:
        overrides["admin_port"] = admin_port
    if insecure_no_auth is not None:
        overrides["insecure_no_auth"] = insecure_no_auth
    settings = get_settings().model_copy(update=overrides)
    try:
        refusal = auth_refusal(settings)
    except TokenConfigError as exc:
        refusal = f"streamward api: {exc}"
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    # JSON lines on stdout (readable on a terminal); uvicorn's loggers go through it too
    setup_logging(settings.log_level)
    tracing.setup_tracing("streamward-api")  # only when OTEL_* asks for it (docs/operations.md)
    # the "listening on" lines show at the default level (warning) too: an operator's first
    # question is whether the process is up, and where
    startup_log.setLevel(min(logging.INFO, logging.getLogger().level))
    app = create_app(settings)
    freeze_heap()
    with _event_loop() as runner:
        return runner.run(_serve_listeners(app, settings))


def _event_loop() -> asyncio.Runner:
    """uvloop when installed (it comes with uvicorn[standard]), as the runners have: the API
    is a loop of small socket reads and writes, and uvloop's C loop spends measurably less
    CPU per request than asyncio's (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def _serve_listeners(app: FastAPI, settings: Settings) -> int:
    """The public listener and, with ``admin_port``, the admin one: one app, one lifespan
    (run here, around both), each listener with its own connection limit."""
    import uvicorn

    def config(app_: ASGIApp, port: int, admin: bool) -> uvicorn.Config:
        return uvicorn.Config(
            app_,
            host=settings.host,
            port=port,
            log_level=settings.log_level,
            access_log=False,  # streamward.access logs each request, with trace ids
            log_config=None,
            lifespan="off",
            # streams end on their own when the run ends; don't hold shutdown hostage long
            timeout_graceful_shutdown=5,
            **uvicorn_options(settings, admin=admin),
        )

    servers = [_Listener(config(app, settings.port, False))]
    if settings.admin_port is not None:
        servers.append(_Listener(config(AdminOnly(app), settings.admin_port, True), admin=True))
    for s in servers:
        s.group = servers
    # SIGTERM/SIGINT stop the first listener (and so all); uvicorn re-raises the signal once
    # everything, the lifespan included, has shut down
    with uvicorn.Server.capture_signals(servers[0]):
        try:
            async with app.router.lifespan_context(app):
                await asyncio.gather(*(s.serve() for s in servers))
        except ProbeError as exc:  # Redis answers but cannot run streamward
            log.error("%s", exc)
            return 1
        finally:  # the captured signal is re-raised below: exit handlers would never run
            tracing.shutdown_tracing()  # exports the spans still buffered (tracing on)
    return 0 if all(s.started for s in servers) else 1


class _Listener(uvicorn.Server):
    """A uvicorn server that stops when any server of its group stops (a signal, a failed
    bind); signals are captured once, around the whole group."""

    def __init__(self, config: uvicorn.Config, admin: bool = False) -> None:
        super().__init__(config)
        self.admin = admin
        self.group: list[_Listener] = [self]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            cfg = self.config
            what = "admin listener (/admin, probes, metrics)" if self.admin else "api"
            startup_log.info("%s listening on http://%s:%d", what, cfg.host, cfg.port)

    async def on_tick(self, counter: int) -> bool:
        if any(s.should_exit for s in self.group):
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # _serve_listeners captures them for the group
