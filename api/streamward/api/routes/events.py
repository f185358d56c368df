"""Event routing: admin CRUD of routes and ``POST /v1/events/{source}``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from redis.exceptions import ClusterDownError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import Response

from streamward.api import invoke as invocation
from streamward.api.deliveries import replay_or_claim, route_claimed, start_once
from streamward.api.deps import (
    ID_PATTERN,
    AdminDep,
    AdminProjectDep,
    AdminProjectFilterDep,
    AppState,
    ProjectDep,
    RoutesDep,
    StateDep,
    check_project,
    quotas_of,
)
from streamward.api.lifecycle import bind_event, session_meta
from streamward.api.problems import ProblemError
from streamward.api.responses import OrjsonResponse
from streamward.api.routing import (
    Match,
    dumps,
    evaluate,
    load_route,
    route_matches,
    validate_route,
)
from streamward.api.schemas import (
    EventAction,
    EventResult,
    EventSession,
    Route,
    RouteOutcomeError,
    RoutePage,
    SessionReset,
)
from streamward.api.sources import EVENT_BODY_OPENAPI, Delivery, load_source, normalise, verify
from streamward.core.tracing import inbox_traceparent
from streamward.lua.errors import QuotaExceeded, SessionBusy, TypeMismatch, write_refusal
from streamward.lua.routes import RouteStore
from streamward.lua.sources import SourceStore

log = logging.getLogger("streamward.api.events")
router = APIRouter(tags=["events"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

SourcePath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Event source.")
]
RouteIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Route id.")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "route_not_found"},
    413: {"description": "body_too_large"},
    422: {"description": "invalid_expression / invalid body"},
    503: {"description": "redis_unavailable"},
}


async def _routes(store: RouteStore, project: str | None) -> list[Route]:
    return (await _parsed_routes(store, project))[0]


async def _parsed_routes(
    store: RouteStore, project: str | None
) -> tuple[list[Route], list[tuple[str, Any, str]]]:
    """Valid routes, and (route_id, raw JSON document, error) of stored ones that are not.

    A route written to Redis past the API's checks must not fail every call that lists
    routes: it is left out (and reported per event by ``post_event``).
    """
    valid, invalid = [], []
    for _, route_id, doc in await store.all(project):
        try:
            valid.append(load_route(doc))
        except ValueError as exc:  # pydantic's ValidationError
            try:
                raw = orjson.loads(doc)
            except orjson.JSONDecodeError:
                raw = None
            invalid.append((route_id, raw, str(exc).replace("\n", " ")[:300]))
    return valid, invalid


# -- admin CRUD ------------------------------------------------------------------------------


@admin_router.post(
    "/routes",
    response_model=Route,
    status_code=201,
    responses={**_ERRORS, 200: {"description": "replaced", "model": Route}},
)
async def save_route(route: Route, routes: RoutesDep, request: Request) -> Response:
    """Create (201) or replace (200) a route; every expression is compiled first."""
    check_project(request, route.project)
    validate_route(route)
    created = await routes.save(route.project, route.route_id, dumps(route))
    body = route.model_dump(exclude_none=True)
    return OrjsonResponse(body, status_code=201 if created else 200)


@admin_router.get("/routes", response_model=RoutePage, responses=_ERRORS)
async def list_routes(
    routes: RoutesDep,
    project: AdminProjectFilterDep,
) -> RoutePage:
    """Every route (optionally of one project; a token without `admin`: its project's)."""
    return RoutePage(items=await _routes(routes, project))


@admin_router.get("/routes/{route_id}", response_model=Route, responses=_ERRORS)
async def read_route(route_id: RouteIdPath, routes: RoutesDep, project: AdminProjectDep) -> Route:
    return await get_route(route_id, routes, project)


async def get_route(route_id: str, routes: RouteStore, project: str) -> Route:
    raw = await routes.get(project, route_id)
    if raw is None:
        raise ProblemError(404, "route_not_found", f"no route {route_id!r} in project {project!r}")
    return load_route(raw)


@admin_router.delete("/routes/{route_id}", response_model=Route, responses=_ERRORS)
async def delete_route(route_id: RouteIdPath, routes: RoutesDep, project: AdminProjectDep) -> Route:
    """Delete a route; its sessions stay (their transcripts remain readable)."""
    route = await get_route(route_id, routes, project)
    await routes.delete(project, route_id)
    return route


@admin_router.post("/routes/{route_id}/reset", responses=_ERRORS)
async def reset_session(
    route_id: RouteIdPath,
    body: SessionReset,
    routes: RoutesDep,
    state: StateDep,
    project: AdminProjectDep,
) -> dict[str, Any]:
    """Manual reset of a key: pending until its generation is quiet (docs/routing.md)."""
    await get_route(route_id, routes, project)
    sid = await routes.mark_reset(project, route_id, body.session_key, "manual")
    if sid is None:
        raise ProblemError(404, "session_not_found", "no session exists for that key yet")
    # deferred: the key's first event once the generation is quiet opens the next one
    return {"session_id": sid, "status": "reset_pending", "reason": "manual"}


# -- events ------------------------------------------------------------------------------------


@router.post(
    "/v1/events/{source}",
    response_model=EventResult,
    status_code=202,
    responses={
        **_ERRORS,
        200: {"description": "duplicate delivery / url_verification"},
        429: {"description": "inbox_full / rate_limited: quotas refused every route"},
    },
    openapi_extra=EVENT_BODY_OPENAPI,
)
async def post_event(
    source: SourcePath, request: Request, project: ProjectDep, state: StateDep, routes: RoutesDep
) -> Response:
    """Route a delivery to the one session of its key, with one outcome per matching route.

    The raw body is read once: its signature is checked on those bytes (401, nothing
    enqueued), then it is parsed as its source's kind sends it. A delivery id seen in the
    last 24 h answers the first answer with ``duplicate: true`` (200).

    A route that fails (its expressions, its input's size, Redis while enqueueing) fails
    alone: the others deliver and the answer is still 202, so a source's retry does not
    start the delivered routes twice. Only when nothing was delivered and Redis was
    unreachable is the whole call answered 503 (a retry is then safe).
    """
    body = await request.body()
    sources = SourceStore(state.client, state.keys)
    src = await load_source(sources, project, source)
    verify(src, request.headers, body)
    delivery = normalise(src.kind, request.headers, body)
    if delivery.challenge is not None:
        return OrjsonResponse({"challenge": delivery.challenge}, status_code=200)
    did = delivery.delivery_id
    if did is None:
        result = await _route_event(state, routes, project, source, delivery)
        return OrjsonResponse(result.model_dump(), status_code=202)
    first = await replay_or_claim(sources, project, source, did)
    if first is not None:
        return OrjsonResponse(first.model_dump(), status_code=200)
    result = await route_claimed(
        sources, project, source, did, _route_event(state, routes, project, source, delivery)
    )
    return OrjsonResponse(result.model_dump(), status_code=202)


async def _route_event(
    state: AppState, routes: RouteStore, project: str, source: str, delivery: Delivery
) -> EventResult:
    valid, invalid = await _parsed_routes(routes, project)
    matching = [r for r in valid if route_matches(r, source, delivery.type)]
    broken = [_invalid_outcome(rid, err) for rid, raw, err in invalid if _may_match(raw, source)]
    max_bytes = state.settings.route_input_max_bytes
    matches: list[Match] = []
    if matching:
        # JMESPath is CPU work on caller-controlled data: bounded (exprguard) and off the loop
        matches = await asyncio.get_running_loop().run_in_executor(
            _EVAL_POOL, _evaluate_all, matching, delivery.type, delivery.payload, max_bytes, source
        )
    outcomes = await asyncio.gather(
        *[
            _deliver_one(state, routes, project, r, m, source, delivery.delivery_id)
            for r, m in zip(matching, matches, strict=True)
        ]
    )
    results = [session for session, _ in outcomes] + broken
    transient = [exc for _, exc in outcomes if exc is not None and _transient(exc)]
    delivered = any(r.action in ("started", "queued") for r in results)
    if transient and not delivered:
        raise transient[0]  # 503 redis_unavailable from the app's handler
    refused = [exc for _, exc in outcomes if isinstance(exc, QuotaExceeded)]
    if refused and not delivered:
        # a quota refused every route that would deliver: 429 with the longest Retry-After,
        # and the delivery's claim is released, so the sender's retry is routed again
        raise max(refused, key=lambda e: e.retry_after_s)
    return EventResult(
        matched=len(results),
        runs_started=sum(1 for r in results if r.action == "started"),
        events_queued=sum(1 for r in results if r.action == "queued"),
        routes_failed=sum(1 for r in results if r.action in ("input_too_large", "failed")),
        sessions=results,
    )


# a few threads: evaluations are bounded, and a burst of hostile events queues here
# instead of taking the default executor from everything else
_EVAL_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sw-route-eval")
_TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
)


def _transient(exc: BaseException) -> bool:
    """Redis unreachable, or refusing writes (full, read-only): a retry of the delivery is safe
    and may succeed; the app's handler answers 503 redis_unavailable for it."""
    return isinstance(exc, _TRANSIENT) or write_refusal(exc) is not None


def _may_match(raw: Any, source: str) -> bool:
    # an unreadable route names its source when it can; one that cannot is reported to all
    return not isinstance(raw, dict) or raw.get("source") in (source, None)


def _invalid_outcome(route_id: str, error: str) -> EventSession:
    log.warning("route %s: stored document is not a valid route: %s", route_id, error)
    detail = f"stored route is not valid: {error}"
    return EventSession(
        route_id=route_id,
        action="failed",
        error=RouteOutcomeError(code="invalid_route", detail=detail),
    )


def _evaluate_all(
    matching: list[Route], event_type: str, payload: Any, max_bytes: int, source: str
) -> list[Match]:
    out = []
    for route in matching:
        try:
            out.append(evaluate(route, event_type, payload, max_bytes, source))
        except Exception as exc:  # e.g. the whole event not serialisable: this route only
            log.warning("route %s/%s: evaluation failed: %r", route.project, route.route_id, exc)
            err = f"{type(exc).__name__}: {exc}"[:300]
            out.append(Match("failed", error=err, code="delivery_error"))
    return out


def _outcome(route: Route, match: Match) -> EventSession:
    """The answer for a route whose match delivers nothing."""
    error = None
    if match.error is not None:
        code = match.code or "delivery_error"
        error = RouteOutcomeError(code=code, field=match.field, detail=match.error)
    action: EventAction = "failed" if match.action == "deliver" else match.action
    return EventSession(
        route_id=route.route_id,
        session_key=(match.key or None) if action in ("input_too_large", "failed") else None,
        action=action,
        error=error,
    )


async def _deliver_one(
    state: AppState,
    routes: RouteStore,
    project: str,
    route: Route,
    match: Match,
    source: str,
    delivery_id: str | None,
) -> tuple[EventSession, Exception | None]:
    if match.action != "deliver" or match.key is None or match.input_json is None:
        return _outcome(route, match), None
    try:
        if route.session is None:
            once = await start_once(state, route, source, delivery_id, match.input_json)
            return once, None
        return await _deliver(state, routes, project, route, match.key, match.input_json), None
    except QuotaExceeded as exc:  # nothing enqueued for this route (429 if none delivered)
        error = RouteOutcomeError(code=exc.code, detail=str(exc))
        refused = EventSession(
            route_id=route.route_id, session_key=match.key or None, action="rejected", error=error
        )
        return refused, exc
    except Exception as exc:  # this route failed; the others' outcomes stand
        code = "redis_unavailable" if _transient(exc) else "delivery_error"
        log.warning("route %s/%s: delivery failed: %r", project, route.route_id, exc)
        error = RouteOutcomeError(code=code, detail=f"{type(exc).__name__}: {exc}"[:300])
        failed = EventSession(
            route_id=route.route_id, session_key=match.key or None, action="failed", error=error
        )
        return failed, exc


async def _deliver(
    state: AppState, routes: RouteStore, project: str, route: Route, key: str, input_json: str
) -> EventSession:
    streams, store = state.streams, state.store
    cfg = route.session
    assert cfg is not None  # sessionless routes start in deliveries.start_once
    binding = await bind_event(state, routes, project, route, key)
    sk = state.keys.session(project, binding.session_id)
    quotas = quotas_of(state)
    # the project's quotas before the meta write: a refusal leaves the session untouched
    ticket = await quotas.admit_before_writes(streams, sk)
    await streams.set_meta(sk, **session_meta(route, key, binding))
    run_id = f"run_{uuid.uuid4().hex}"
    try:
        enq = await quotas.enqueue(
            store,
            sk,
            run_id,
            input_json,
            multitask=cfg.multitask,
            source=f"event:{route.route_id}",
            traceparent=inbox_traceparent(),
            session_type=cfg.type or "",
            default_type=state.settings.default_type,
            admitted=ticket,
        )
    except SessionBusy:
        return EventSession(
            route_id=route.route_id,
            session_key=key,
            session_id=binding.session_id,
            action="rejected",
        )
    except TypeMismatch as exc:  # the route's type changed under a live session
        return EventSession(
            route_id=route.route_id,
            session_key=key,
            session_id=binding.session_id,
            action="rejected",
            error=RouteOutcomeError(code="type_mismatch", detail=str(exc)),
        )
    await invocation.wake_owner(store, streams, sk, enq, cfg.multitask, "event")
    return EventSession(
        route_id=route.route_id,
        session_key=key,
        session_id=binding.session_id,
        run_id=run_id,
        action="started" if binding.action == "started" else "queued",
    )
