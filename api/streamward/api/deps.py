"""Annotated dependencies: Redis facades, settings, the caller's project, the admin guard.

Every dependency is ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
worker thread, which costs more than the work they do.
"""

from __future__ import annotations

import hmac
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
from streamward.lua.archive import ArchiveCalls
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys
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
    # encoded once so the per-request compare does no allocation beyond the header
    api_tokens: list[tuple[bytes, str]] = field(default_factory=list)
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


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def caller_project(request: Request, state: StateDep) -> str:
    """The project the caller's bearer token is bound to (``default`` when auth is off)."""
    if not state.api_tokens:
        return DEFAULT_PROJECT
    token = _bearer(request)
    if token is None:
        raise ProblemError(401, "missing_token", "a bearer token is required", headers=_CHALLENGE)
    given = token.encode()
    found: str | None = None
    # compare against every configured token so the time taken does not reveal which matched
    for candidate, project in state.api_tokens:
        if hmac.compare_digest(given, candidate):
            found = project
    if found is None:
        raise ProblemError(403, "invalid_token", "the bearer token is not valid")
    return found


ProjectDep = Annotated[str, Depends(caller_project)]


async def require_admin(request: Request) -> None:
    """Admin guard: 401 without a bearer token, 403 with a wrong one (or none configured)."""
    # the state straight from the app, not through StateDep: one dependency less to solve
    # on every admin request, the runners' ingest included
    state: AppState = request.app.state.sw
    token = _bearer(request)
    if token is None:
        raise ProblemError(
            401, "missing_token", "the admin bearer token is required", headers=_CHALLENGE
        )
    configured = state.settings.admin_token
    if not configured:
        raise ProblemError(403, "admin_disabled", "no admin token is configured on this server")
    if not hmac.compare_digest(token.encode(), configured.encode()):
        raise ProblemError(403, "invalid_token", "the admin bearer token is not valid")


AdminDep = Depends(require_admin)

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
