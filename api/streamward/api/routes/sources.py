"""Admin: event sources (``/admin/sources``) and the dry run of a route (``.../test``)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path
from starlette.responses import Response

from streamward.api.deliveries import once_ids
from streamward.api.deps import (
    ID_PATTERN,
    AdminDep,
    AdminProjectDep,
    AdminProjectFilterDep,
    RoutesDep,
    StateDep,
)
from streamward.api.problems import ProblemError
from streamward.api.responses import OrjsonResponse
from streamward.api.routes.events import _EVAL_POOL, RouteIdPath, get_route
from streamward.api.routing import evaluate, route_matches
from streamward.api.schemas import RouteOutcomeError, RouteTest, RouteTestResult
from streamward.api.sources import SourceIn, SourceOut, SourcePage, SourceStored, public
from streamward.lua.routes import key_hash
from streamward.lua.sources import SourceStore

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
SourcePath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Event source.")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token"},
    403: {"description": "invalid_token"},
    404: {"description": "source_not_found / route_not_found"},
    422: {"description": "invalid_source / invalid body"},
}


async def get_sources(state: StateDep) -> SourceStore:
    return SourceStore(state.client, state.keys)


SourcesDep = Annotated[SourceStore, Depends(get_sources)]


async def _stored(sources: SourceStore, project: str, source: str) -> SourceStored:
    raw = await sources.get(project, source)
    if raw is None:
        raise ProblemError(404, "source_not_found", f"no source {source!r} in project {project!r}")
    return SourceStored.model_validate_json(raw)


@router.put(
    "/sources/{source}",
    response_model=SourceOut,
    status_code=201,
    responses={**_ERRORS, 200: {"description": "replaced", "model": SourceOut}},
)
async def put_source(
    source: SourcePath, body: SourceIn, sources: SourcesDep, project: AdminProjectDep
) -> Response:
    """Create (201) or replace (200) a source. A verified source needs a secret; leaving it
    out keeps the stored one, so a config read back with GET can be applied again."""
    secret = body.secret
    if secret is None and body.verification != "none":
        old = await sources.get(project, source)
        secret = None if old is None else SourceStored.model_validate_json(old).secret
        if secret is None:
            raise ProblemError(
                422,
                "invalid_source",
                f"verification {body.verification!r} needs a secret",
                field="secret",
            )
    stored = SourceStored(**{**body.model_dump(), "secret": secret}, source=source, project=project)
    created = await sources.save(project, source, stored.model_dump_json(exclude_none=True))
    return OrjsonResponse(public(stored).model_dump(), status_code=201 if created else 200)


@router.get("/sources", response_model=SourcePage, responses=_ERRORS)
async def list_sources(sources: SourcesDep, project: AdminProjectFilterDep) -> SourcePage:
    """Every configured source (never their secrets)."""
    items = [
        public(SourceStored.model_validate_json(doc)) for _, _, doc in await sources.all(project)
    ]
    return SourcePage(items=items)


@router.get("/sources/{source}", response_model=SourceOut, responses=_ERRORS)
async def get_source(
    source: SourcePath, sources: SourcesDep, project: AdminProjectDep
) -> SourceOut:
    return public(await _stored(sources, project, source))


@router.delete("/sources/{source}", response_model=SourceOut, responses=_ERRORS)
async def delete_source(
    source: SourcePath, sources: SourcesDep, project: AdminProjectDep
) -> SourceOut:
    """Delete a source: its deliveries are then generic and unverified again."""
    stored = await _stored(sources, project, source)
    await sources.delete(project, source)
    return public(stored)


@router.post("/routes/{route_id}/test", response_model=RouteTestResult, responses=_ERRORS)
async def test_route(
    route_id: RouteIdPath,
    body: RouteTest,
    routes: RoutesDep,
    state: StateDep,
    project: AdminProjectDep,
) -> RouteTestResult:
    """Dry run: what the route makes of an event (filter, key, session, input), with the
    evaluation events use; nothing is bound, enqueued or started."""
    route = await get_route(route_id, routes, project)
    type_matches = route_matches(route, route.source, body.type)  # as deliveries match
    if not type_matches:
        return RouteTestResult(route_id=route_id, type_matches=False, action="not_on")
    max_bytes = state.settings.route_input_max_bytes
    # the route's own source: event_source() answers what a delivery to it would see
    run = partial(evaluate, route, body.type, body.payload, max_bytes, source=route.source)
    match = await asyncio.get_running_loop().run_in_executor(_EVAL_POOL, run)
    error = None
    if match.error is not None:
        code = match.code or "delivery_error"
        error = RouteOutcomeError(code=code, field=match.field, detail=match.error)
    filter_passed = None if route.filter is None else match.action != "filtered"
    session_id = None  # sessionless without a delivery id: a random one per event
    if match.action == "deliver" and route.session is None and body.delivery_id is not None:
        session_id = once_ids(route, route.source, body.delivery_id)[0]
    elif match.key:
        current = (await routes.binding(project, route_id, match.key)).get("session_id")
        session_id = current or f"{route_id}.{key_hash(match.key)}.1"
    run_input = None if match.input_json is None else orjson.loads(match.input_json)
    return RouteTestResult(
        route_id=route_id,
        type_matches=True,
        action=match.action,
        filter_passed=filter_passed,
        session_key=match.key or None,
        session_id=session_id,
        input=run_input,
        error=error,
    )
