"""Annotated dependencies: Redis facades, settings, the caller's project, the scope guards.

Every dependency is ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
worker thread, which costs more than the work they do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request

from streamward.api.audit import IngestAudit
from streamward.api.config import Settings
from streamward.api.metrics import ApiMetrics
from streamward.api.problems import ProblemError
from streamward.api.quotas import Quotas
from streamward.api.starts import StartWaiters
from streamward.api.tokens import (
    ADMIN,
    ROUTES_ADMIN,
    Principal,
    TokenTable,
    build_table,
    challenge,
    route_scope,
)
from streamward.lua.archive import ArchiveCalls
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.outbox import Outbox
from streamward.lua.probe import Capabilities, probe
from streamward.lua.quotas import QuotaCalls
from streamward.lua.routes import RouteStore
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
DEFAULT_PROJECT = "default"


@dataclass
class AppState:
    """What the lifespan opens once per process and every request shares."""

    settings: Settings
    client: RedisClient
    keys: Keys
    store: LeaseStore
    streams: Streams
    routes: RouteStore
    scripts_loaded: bool = False
    # what the startup capability probe found (None until Redis answered it once)
    capabilities: Capabilities | None = None
    metrics: ApiMetrics | None = None
    audit: IngestAudit | None = None
    # the durable record (STREAMWARD_DATABASE_URL), an AsyncEngine; None: Redis only.
    # Typed loosely so the API imports without the `db` extra.
    record: Any = None
    # detached invokes waiting for their run's start (fed by this process's ingest)
    starts: StartWaiters = field(default_factory=StartWaiters)
    # the signed completion callbacks' outbox (api/callbacks.py)
    outbox: Outbox | None = None
    # every configured token, hashed (tokens.build_table; from ``settings`` when not given)
    tokens: TokenTable = field(default_factory=TokenTable)

    def __post_init__(self) -> None:
        if not self.tokens.entries:  # a state built by hand (the test kit) gets its tokens
            self.tokens = build_table(self.settings)

    # the quota checks around every enqueue (api/quotas.py); built on first use
    quotas: Quotas | None = None


def quotas_of(state: AppState) -> Quotas:
    """The process's quota checks (built on first use, so every AppState has them)."""
    if state.quotas is None:
        calls = QuotaCalls(state.client, state.keys, state.store.scripts)
        state.quotas = Quotas(state.settings, calls, state.metrics)
    return state.quotas


async def mark_changed(state: AppState, sk: SessionKeys) -> None:
    """With the record configured: a lifecycle change no invoke announces (delete, force
    release, reset) makes the session due for an archive pass at once."""
    if state.record is not None:
        await ArchiveCalls(state.client, state.keys).mark(sk.ref, 0)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sw
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_store(state: StateDep) -> LeaseStore:
    return state.store


async def get_streams(state: StateDep) -> Streams:
    return state.streams


async def get_app_settings(state: StateDep) -> Settings:
    return state.settings


async def get_routes(state: StateDep) -> RouteStore:
    return state.routes


StoreDep = Annotated[LeaseStore, Depends(get_store)]
RoutesDep = Annotated[RouteStore, Depends(get_routes)]
StreamsDep = Annotated[Streams, Depends(get_streams)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def _bearer(request: Request) -> str | None:
    raw = request.headers.get("authorization")
    if raw is None:
        return None
    scheme, _, value = raw.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


# where the admin guard leaves the caller's principal for handlers bound to a project
PRINCIPAL_KEY = "streamward.principal"


def authorize(request: Request, table: TokenTable) -> Principal:
    """The caller's principal, if its token holds the scope the matched route declares
    (``tokens.declare_scopes``): 401 ``missing_token``, 403 ``invalid_token``,
    ``insufficient_scope`` or ``admin_disabled`` (no configured token has that scope)."""
    required = route_scope(request.scope)
    token = _bearer(request)
    if token is None:
        detail = f"a bearer token with scope {required} is required"
        raise ProblemError(401, "missing_token", detail, headers=challenge(required))
    principal = table.lookup(token)
    if principal is None:
        if required in _ADMIN_SCOPES and not table.grants(required):
            detail = f"no token with scope {required} is configured on this server"
            raise ProblemError(403, "admin_disabled", detail)
        raise ProblemError(
            403,
            "invalid_token",
            "the bearer token is not valid",
            headers=challenge(error="invalid_token"),
        )
    if required not in principal.scopes:
        raise ProblemError(
            403,
            "insufficient_scope",
            f"the token lacks scope {required}",
            headers=challenge(required, "insufficient_scope"),
            required_scope=required,
        )
    return principal


_ADMIN_SCOPES = (ADMIN, ROUTES_ADMIN)


async def caller_project(request: Request, state: StateDep) -> str:
    """The project of the caller's token, once it holds the route's scope (``default`` when
    /v1 has no tokens configured)."""
    table = state.tokens
    if not table.v1_auth:
        return DEFAULT_PROJECT
    return authorize(request, table).project


ProjectDep = Annotated[str, Depends(caller_project)]


async def require_admin(request: Request) -> None:
    """The /admin guard: the route's scope (``admin``; ``routes:admin`` for routes and
    sources). The principal is left in the request scope for project-bound handlers."""
    # the state straight from the app, not through StateDep: one dependency less to solve
    # on every admin request, the runners' ingest included
    state: AppState = request.app.state.sw
    request.scope[PRINCIPAL_KEY] = authorize(request, state.tokens)


AdminDep = Depends(require_admin)


def check_project(request: Request, project: str | None) -> str:
    """The project an /admin call acts on: ``project`` (else the token's own). A token
    without ``admin`` (``routes:admin``) manages its own project only: 403
    ``insufficient_scope`` for another."""
    principal: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if principal is None:  # not behind require_admin: nothing to bind
        return project or DEFAULT_PROJECT
    if project is None or project == principal.project or principal.is_admin:
        return project or principal.project
    raise ProblemError(
        403,
        "insufficient_scope",
        f"a token of project {principal.project!r} without scope admin cannot manage "
        f"project {project!r}",
        headers=challenge(ADMIN, "insufficient_scope"),
        required_scope=ADMIN,
    )


_AdminProjectQuery = Annotated[
    str | None,
    Query(
        pattern=ID_PATTERN,
        min_length=1,
        max_length=200,
        description="Project (default: the token's own; `default` for STREAMWARD_ADMIN_TOKEN).",
    ),
]


async def admin_project(request: Request, project: _AdminProjectQuery = None) -> str:
    return check_project(request, project)


async def admin_project_filter(request: Request, project: _AdminProjectQuery = None) -> str | None:
    """A listing's project: any or all for an ``admin`` token, the token's own otherwise."""
    principal: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if project is None and (principal is None or principal.is_admin):
        return None
    return check_project(request, project)


# routes and sources: the project they act on, bound to the token's unless it has `admin`
AdminProjectDep = Annotated[str, Depends(admin_project)]
AdminProjectFilterDep = Annotated[str | None, Depends(admin_project_filter)]

SessionIdPath = Annotated[
    str,
    Path(
        pattern=ID_PATTERN,
        min_length=1,
        max_length=200,
        description="Session id: letters, digits and . _ : - (1..200 characters).",
    ),
]
ReplicaIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=200, description="Replica id.")
]
ProjectQuery = Annotated[
    str,
    Query(pattern=ID_PATTERN, min_length=1, max_length=200, description="Project of the session."),
]


async def session_keys(
    state: StateDep, project: ProjectDep, session_id: SessionIdPath
) -> SessionKeys:
    """The caller's session: keys are scoped by project, so another project's id is unknown."""
    return state.keys.session(project, session_id)


SessionDep = Annotated[SessionKeys, Depends(session_keys)]


async def state_and_session(
    request: Request, session_id: SessionIdPath
) -> tuple[AppState, SessionKeys]:
    """``StateDep`` and ``SessionDep`` as one dependency: for the hottest endpoint (invoke),
    where each resolved dependency costs measurable CPU."""
    state: AppState = request.app.state.sw
    project = await caller_project(request, state)
    return state, state.keys.session(project, session_id)


StateSessionDep = Annotated[tuple[AppState, SessionKeys], Depends(state_and_session)]


async def ensure_ready(state: AppState) -> None:
    """Ping Redis; the first time it answers, probe it and load the scripts.

    Raises RedisError when Redis is unreachable, ProbeError when streamward cannot run on it
    (no Lua scripting, wrong mode, a replica, too old).
    """
    await state.client.ping()
    if state.capabilities is None:
        state.capabilities = await probe(state.client, state.settings.redis_config())
        logging.getLogger("streamward.api").info("redis: %s", state.capabilities.line())
    if not state.scripts_loaded:
        await state.store.scripts.load_all(state.client)
        await state.streams.ensure_work_group()
        state.scripts_loaded = True
