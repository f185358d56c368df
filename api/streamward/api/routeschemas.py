"""HTTP schemas of event routing: routes, their session settings, events and their outcomes
(docs/routing.md). Re-exported by ``streamward.api.schemas``."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, model_validator

from streamward.core.contract import Id, Model
from streamward.core.jsonsafe import JSON_INT, JSONValue, Text

Multitask = Literal["enqueue", "reject", "interrupt"]
# a session type: names a work stream (lua/keys.py TYPE_PATTERN)
SessionType = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]

OnOwnerDeath = Literal["restart", "queue", "drop"]


class RouteSession(Model):
    """How a route's events map to sessions, and those sessions' lifecycle (docs/routing.md);
    ``key_template: chat`` (Hermes' rules) instead of ``key_expr``, with the chat options."""

    key_expr: Annotated[Text, Field(min_length=1, max_length=2000)] | None = None
    key_template: Literal["chat"] | None = None
    group_sessions_per_user: bool = True
    thread_sessions_per_user: bool = False
    # legacy chat rule of routes stored before Hermes keying: kept so their keys stay stable
    isolation: Literal["shared", "per_user"] | None = None
    sender_attribution: bool = False
    # without an event or run this long, the key's next event opens a new generation (idle)
    idle_timeout_seconds: Annotated[int, Field(ge=30, le=2_592_000), JSON_INT] | None = None
    session_timeout_seconds: Annotated[int, Field(ge=60, le=2_592_000), JSON_INT] | None = 3600
    daily_reset_hour: Annotated[int, Field(ge=0, le=23), JSON_INT] | None = None
    # how long an idle session stays loaded in its runner (the runner's close_delay otherwise)
    close_delay_seconds: Annotated[int, Field(ge=0, le=86_400), JSON_INT] | None = None
    on_owner_death: OnOwnerDeath = "restart"
    multitask: Multitask = "enqueue"
    # the type of the sessions this route creates (None: the default type)
    type: SessionType | None = None

    @model_validator(mode="before")
    @classmethod
    def _seed_names(cls, data: Any) -> Any:
        # OpenHands' automation examples name on_owner_death on_sandbox_death
        if isinstance(data, dict) and "on_sandbox_death" in data:
            data = dict(data)
            alias = data.pop("on_sandbox_death")
            if data.setdefault("on_owner_death", alias) != alias:
                raise ValueError("on_sandbox_death and on_owner_death disagree")
        return data


class Route(Model):
    route_id: Id
    project: Id = "default"
    source: Id
    on: Annotated[list[Annotated[Text, Field(min_length=1, max_length=200)]], Field(min_length=1)]
    filter: Annotated[Text, Field(min_length=1, max_length=2000)] | None = None
    # without one, every event starts a fresh session and run (docs/routing.md)
    session: RouteSession | None = None
    input_expr: Annotated[Text, Field(min_length=1, max_length=2000)] | None = None
    # the payload, or {"type", "payload"} for routes stored before (routing.load_route)
    expr_root: Literal["payload", "envelope"] = "payload"

    @model_validator(mode="before")
    @classmethod
    def _derived_id(cls, data: Any) -> Any:
        # the seeds' examples name no route_id: derive a stable one from the document, so
        # posting the same route again replaces it instead of adding a twin
        source = data.get("source") if isinstance(data, dict) else None
        if isinstance(source, str) and "route_id" not in data:
            try:
                doc = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
            except TypeError:  # e.g. an integer past 64 bits: left to the field checks
                return data
            digest = hashlib.sha256(doc).hexdigest()
            data = {**data, "route_id": f"{source[:150]}-{digest[:12]}"}
        return data


class RoutePage(Model):
    items: list[Route]


class EventRequest(Model):
    type: Annotated[Text, Field(min_length=1, max_length=200)]
    payload: JSONValue = None


EventAction = Literal[
    "started", "queued", "filtered", "no_key", "rejected", "input_too_large", "failed"
]


class RouteOutcomeError(Model):
    """Why one route of a delivery did not deliver normally (docs/routing.md)."""

    code: str  # expression_error | input_too_large | redis_unavailable | delivery_error
    field: str | None = None  # the expression concerned, when one is
    detail: str


class EventSession(Model):
    route_id: str
    session_key: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    action: EventAction
    error: RouteOutcomeError | None = None


class EventResult(Model):
    matched: int
    runs_started: int
    events_queued: int
    # routes answered input_too_large or failed: the others still delivered
    routes_failed: int = 0
    sessions: list[EventSession]
    # a redelivery (same delivery id within 24 h): the first answer, nothing delivered again
    duplicate: bool = False


class RouteTest(Model):
    """``POST /admin/routes/{route_id}/test``: an event to evaluate without delivering it."""

    type: Annotated[Text, Field(min_length=1, max_length=200)]
    payload: JSONValue = None
    delivery_id: Annotated[Text, Field(min_length=1, max_length=200)] | None = None


class RouteTestResult(Model):
    route_id: str
    type_matches: bool  # the route's source is not checked: the test names the route
    action: EventAction | Literal["deliver", "not_on"]
    filter_passed: bool | None = None  # None when the route has no filter
    session_key: str | None = None
    session_id: str | None = None  # the generation an event would reach now
    input: JSONValue = None
    error: RouteOutcomeError | None = None


class SessionResetResult(Model):
    """``POST /v1/sessions/{id}/reset``: reset_pending (routed, taken once quiet) or reset."""

    session_id: str
    status: Literal["reset_pending", "reset"]
    reason: Literal["manual"] = "manual"
    generation: int | None = None  # the new generation of a session that is not routed


class SessionReset(Model):
    session_key: Annotated[Text, Field(min_length=1, max_length=2000)]
