"""Event routing: admin CRUD of routes and ``POST /v1/events/{source}``."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from streamward.api.deps import ID_PATTERN, AdminDep, AppState, ProjectDep, RoutesDep, StateDep
from streamward.api.problems import ProblemError
from streamward.api.responses import OrjsonResponse
from streamward.api.routes.sessions import _wake_owner
from streamward.api.routing import dumps, evaluate, route_matches, validate_route
from streamward.api.schemas import (
    EventRequest,
    EventResult,
    EventSession,
    Route,
    RoutePage,
    SessionReset,
)
from streamward.lua.errors import SessionBusy
from streamward.lua.routes import RouteStore

router = APIRouter(tags=["events"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

SourcePath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Event source.")
]
RouteIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Route id.")
]
ProjectParam = Annotated[
    str, Query(pattern=ID_PATTERN, min_length=1, max_length=200, description="Route's project.")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "route_not_found"},
    422: {"description": "invalid_expression / invalid body"},
    503: {"description": "redis_unavailable"},
}
RETIRED = {"dead": "dead", "deleted": "manual", "expired": "manual"}


async def _routes(store: RouteStore, project: str | None) -> list[Route]:
    return [Route.model_validate_json(doc) for _, _, doc in await store.all(project)]


# -- admin CRUD ------------------------------------------------------------------------------


@admin_router.post("/routes", response_model=Route, status_code=201, responses=_ERRORS)
async def save_route(route: Route, routes: RoutesDep) -> Response:
    """Create (201) or replace (200) a route; every expression is compiled first."""
    validate_route(route)
    created = await routes.save(route.project, route.route_id, dumps(route))
    body = route.model_dump(exclude_none=True)
    return OrjsonResponse(body, status_code=201 if created else 200)


@admin_router.get("/routes", response_model=RoutePage, responses=_ERRORS)
async def list_routes(
    routes: RoutesDep,
    project: Annotated[
        str | None, Query(pattern=ID_PATTERN, max_length=200, description="Only this project.")
    ] = None,
) -> RoutePage:
    """Every route (optionally of one project)."""
    return RoutePage(items=await _routes(routes, project))


@admin_router.get("/routes/{route_id}", response_model=Route, responses=_ERRORS)
async def get_route(
    route_id: RouteIdPath, routes: RoutesDep, project: ProjectParam = "default"
) -> Route:
    raw = await routes.get(project, route_id)
    if raw is None:
        raise ProblemError(404, "route_not_found", f"no route {route_id!r} in project {project!r}")
    return Route.model_validate_json(raw)


@admin_router.delete("/routes/{route_id}", response_model=Route, responses=_ERRORS)
async def delete_route(
    route_id: RouteIdPath, routes: RoutesDep, project: ProjectParam = "default"
) -> Route:
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
    project: ProjectParam = "default",
) -> dict[str, Any]:
    """Manual reset: the key's current generation expires; its next event starts a new one."""
    await get_route(route_id, routes, project)
    sid = await routes.mark_reset(project, route_id, body.session_key, "manual")
    if sid is None:
        raise ProblemError(404, "session_not_found", "no session exists for that key yet")
    retention_ms = state.settings.retention_s * 1000
    sk = state.keys.session(project, sid)
    delete_after = await state.streams.retire_session(sk, "expired", "manual", retention_ms)
    return {
        "session_id": sid,
        "status": "expired",
        "reason": "manual",
        "delete_after_ms": delete_after,
    }


# -- events ------------------------------------------------------------------------------------


@router.post("/v1/events/{source}", response_model=EventResult, status_code=202, responses=_ERRORS)
async def post_event(
    source: SourcePath, body: EventRequest, project: ProjectDep, state: StateDep, routes: RoutesDep
) -> EventResult:
    """Route an event to the one session of its key: started, queued, filtered or no_key."""
    matching = [r for r in await _routes(routes, project) if route_matches(r, source, body.type)]
    results = await asyncio.gather(*[_deliver(state, routes, project, r, body) for r in matching])
    return EventResult(
        matched=len(matching),
        runs_started=sum(1 for r in results if r.action == "started"),
        events_queued=sum(1 for r in results if r.action == "queued"),
        sessions=list(results),
    )


async def _deliver(
    state: AppState, routes: RouteStore, project: str, route: Route, event: EventRequest
) -> EventSession:
    match = evaluate(route, event.type, event.payload)
    if match.action != "deliver" or match.key is None:
        return EventSession(route_id=route.route_id, action=match.action)  # type: ignore[arg-type]
    settings, streams, store = state.settings, state.streams, state.store
    cfg = route.session
    bind_args: dict[str, Any] = {
        "session_timeout_ms": cfg.session_timeout_seconds * 1000,
        "daily_reset_hour": cfg.daily_reset_hour,
        "clock_offset_ms": settings.clock_offset_ms,
    }
    binding = await routes.bind(project, route.route_id, match.key, **bind_args)
    sk = state.keys.session(project, binding.session_id)
    if binding.action == "queued":
        status = (await streams.meta(sk)).get("status", "")
        if status in RETIRED:  # dead (drop policy) or deleted: the key starts over
            binding = await routes.bind(
                project, route.route_id, match.key, reset_reason=RETIRED[status], **bind_args
            )
            sk = state.keys.session(project, binding.session_id)
    retention_ms = settings.retention_s * 1000
    if binding.action == "started" and binding.previous_session_id:
        prev = state.keys.session(project, binding.previous_session_id)
        prev_status = (await streams.meta(prev)).get("status", "")
        if prev_status not in ("expired", "deleted"):
            await streams.retire_session(prev, "expired", binding.reason, retention_ms)
    await streams.set_meta(
        sk,
        route_id=route.route_id,
        session_key=match.key,
        generation=binding.generation,
        on_owner_death=cfg.on_owner_death,
        idle_timeout_ms=cfg.idle_timeout_seconds * 1000,
    )
    run_id = f"run_{uuid.uuid4().hex}"
    try:
        enq = await store.enqueue(
            sk,
            run_id,
            orjson.dumps(match.input).decode(),
            multitask=cfg.multitask,
            source=f"event:{route.route_id}",
        )
    except SessionBusy:
        return EventSession(
            route_id=route.route_id,
            session_key=match.key,
            session_id=binding.session_id,
            action="rejected",
        )
    await _wake_owner(store, streams, sk, enq, cfg.multitask, "event")
    return EventSession(
        route_id=route.route_id,
        session_key=match.key,
        session_id=binding.session_id,
        run_id=run_id,
        action=binding.action,
    )
