"""Route evaluation: bounded JMESPath (``exprguard``), chat key templates, event → (key, input).

Expressions see the payload as their root (``expr_root: payload``); the envelope is reached
through ``event_type()`` / ``event_source()``. A route stored before that carries no
``expr_root`` and is loaded as ``envelope`` by ``load_route`` (its expressions keep
``payload.``), so an upgrade changes no stored route's meaning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jmespath.exceptions import JMESPathError

from streamward.api import chatkeys
from streamward.api.exprguard import (
    BudgetExceeded,
    ExpressionRejected,
    compile_checked,
    json_size_over,
    search,
)
from streamward.api.problems import ProblemError
from streamward.api.schemas import Route

log = logging.getLogger("streamward.api.routing")
MatchAction = Literal["deliver", "filtered", "no_key", "input_too_large", "failed"]


def route_exprs(route: Route) -> dict[str, str]:
    """A route's JMESPath expressions by field name (the names problems and outcomes use)."""
    exprs = {
        "filter": route.filter,
        "session.key_expr": route.session.key_expr if route.session else None,
        "input_expr": route.input_expr,
    }
    return {field: expr for field, expr in exprs.items() if expr is not None}


def load_route(doc_json: str | bytes) -> Route:
    """A stored route, migrated: a document without ``expr_root`` predates payload-rooted
    expressions and sees the envelope; its ``idle_timeout_seconds`` then meant "unload from
    memory" and becomes ``close_delay_seconds`` (idle no longer only unloads, it resets)."""
    raw = orjson.loads(doc_json)
    if isinstance(raw, dict) and "expr_root" not in raw:
        raw["expr_root"] = "envelope"
        session = raw.get("session")
        if isinstance(session, dict) and "idle_timeout_seconds" in session:
            session.setdefault("close_delay_seconds", session.pop("idle_timeout_seconds"))
    return Route.model_validate(raw)


def validate_route(route: Route) -> None:
    """Compile every expression within the limits of ``exprguard``; 422 ``invalid_expression``
    naming the field and what is wrong (syntax, length, depth, size or fan-out)."""
    for field, expr in route_exprs(route).items():
        try:
            compile_checked(expr)
        except ExpressionRejected as exc:
            raise ProblemError(
                422,
                "invalid_expression",
                f"{field}: {exc}",
                field=field,
                expression=expr,
            ) from None
    s = route.session
    if s is not None and (s.key_expr is None) == (s.key_template is None):
        raise ProblemError(
            422,
            "invalid_route",
            "session: set exactly one of key_expr and key_template",
            field="session.key_expr",
        )


@dataclass(frozen=True, slots=True)
class Match:
    """What one route makes of one event."""

    action: MatchAction
    key: str | None = None
    input_json: str | None = None  # the run's input, serialised (checked against the cap)
    field: str | None = None  # the expression that failed or was too big
    error: str | None = None  # why, for the caller and the log
    code: str | None = None  # expression_error | input_too_large | delivery_error


_LOGGED: dict[tuple[str, ...], None] = {}  # insertion-ordered: the oldest goes first
_LOGGED_MAX = 1024


def _log_once(project: str, route_id: str, field: str, expr: str, kind: str, msg: str) -> None:
    # one line per route, field, expression and kind of failure (not per message: a type
    # error's message quotes the payload): a poison expression on a busy source must not
    # log once per event
    seen = (project, route_id, field, expr, kind)
    if seen in _LOGGED:
        return
    _LOGGED[seen] = None
    if len(_LOGGED) > _LOGGED_MAX:
        _LOGGED.pop(next(iter(_LOGGED)), None)
    log.warning(
        "route %s/%s: %s failed (%s: %s); counted for this route only, logged once",
        project,
        route_id,
        field,
        kind,
        msg,
    )


def _search(route: Route, field: str, expr: str, ev: _Event) -> tuple[Any, str | None]:
    """(result, None) or (None, error text): any exception is this route's problem only."""
    try:
        return ev.search(expr), None
    except Exception as exc:  # RecursionError, MemoryError, TypeError, JMESPathError, ...
        msg = str(exc).replace("\n", " ")[:300]
        _log_once(route.project, route.route_id, field, expr, type(exc).__name__, msg)
        return None, f"{type(exc).__name__}: {msg}"


@dataclass(frozen=True, slots=True)
class _Event:
    root: Any  # what expressions see
    event_type: str
    source: str

    def search(self, expr: str) -> Any:
        return search(expr, self.root, event_type=self.event_type, event_source=self.source)


def _key(route: Route, payload: Any, ev: _Event) -> Match | str | None:
    s = route.session
    if s is None:
        return ""  # no session key: every event starts its own session (deliveries.py)
    if s.key_template == "chat":
        msg = chatkeys.message(payload)
        if s.isolation is not None:
            return chatkeys.legacy_chat_key(msg, s.isolation)
        return chatkeys.chat_key(
            msg,
            group_sessions_per_user=s.group_sessions_per_user,
            thread_sessions_per_user=s.thread_sessions_per_user,
        )
    if s.key_expr is None:
        msg = "route has no key rule"
        return Match("no_key", field="session.key_expr", error=msg, code="expression_error")
    raw_key, err = _search(route, "session.key_expr", s.key_expr, ev)
    if err is not None:
        return Match("no_key", field="session.key_expr", error=err, code="expression_error")
    return chatkeys.text(raw_key)


def _attributed(route: Route, payload: Any, run_input: Any) -> Any:
    s = route.session
    if s is None:  # a sessionless route: nobody shares the session, nothing to attribute
        return run_input
    msg = chatkeys.message(payload)
    who = chatkeys.sender(msg) if s.sender_attribution else None
    if who is None:
        return run_input
    shared = s.key_template != "chat" or chatkeys.shared_session(
        msg,
        group_sessions_per_user=s.group_sessions_per_user,
        thread_sessions_per_user=s.thread_sessions_per_user,
    )
    return chatkeys.attribute(run_input, who, shared)


def evaluate(
    route: Route,
    event_type: str,
    payload: Any,
    max_input_bytes: int = 256 * 1024,
    source: str | None = None,
) -> Match:
    """Filter, key and input of ``route`` for an event; no expression makes it raise
    (serialising an event orjson refuses can: the caller counts that for the route).

    CPU-bound and bounded (``exprguard``): callers run it off the event loop. Expressions
    were checked at save time, but a route written to Redis directly is checked here too
    (``compile_checked`` raises, and that counts like any evaluation error).
    """
    envelope = {"type": event_type, "payload": payload}
    root = payload if route.expr_root == "payload" else envelope
    ev = _Event(root, event_type, route.source if source is None else source)
    if route.filter is not None:
        passed, err = _search(route, "filter", route.filter, ev)
        if err is not None:
            return Match("filtered", field="filter", error=err, code="expression_error")
        if not passed:
            return Match("filtered")
    key = _key(route, payload, ev)
    if isinstance(key, Match):
        return key
    if key is None:
        return Match("no_key")
    key = key[:2000]
    if route.input_expr is None:
        # the whole event, as before: its size is already bounded by MAX_BODY_BYTES
        whole = _attributed(route, payload, envelope)
        return Match("deliver", key=key, input_json=orjson.dumps(whole).decode())
    try:
        run_input = _attributed(route, payload, ev.search(route.input_expr))
    except JMESPathError:
        # a function given the wrong type by some payload: the run gets the whole event
        whole = _attributed(route, payload, envelope)
        return Match("deliver", key=key, input_json=orjson.dumps(whole).decode())
    except BudgetExceeded as exc:
        return Match(
            "input_too_large", key=key, field="input_expr", error=str(exc), code="input_too_large"
        )
    except Exception as exc:  # RecursionError, MemoryError, a route that fails its checks
        msg = str(exc).replace("\n", " ")[:300]
        kind = type(exc).__name__
        _log_once(route.project, route.route_id, "input_expr", route.input_expr, kind, msg)
        err = f"{type(exc).__name__}: {msg}"
        return Match("failed", key=key, field="input_expr", error=err, code="expression_error")
    too_large = f"input_expr output is over {max_input_bytes} bytes (ROUTE_INPUT_MAX_BYTES)"
    # estimate first (stops early, whatever the output's size), then the exact size
    over = json_size_over(run_input, max_input_bytes)
    input_raw = b"" if over else orjson.dumps(run_input)
    if over or len(input_raw) > max_input_bytes:
        return Match(
            "input_too_large", key=key, field="input_expr", error=too_large, code="input_too_large"
        )
    return Match("deliver", key=key, input_json=input_raw.decode())


def route_matches(route: Route, source: str, event_type: str) -> bool:
    """``on`` holds the type, ``*``, or the type's event name before its first ``.``
    (``issue_comment`` takes every ``issue_comment.<action>`` of a github source)."""
    if route.source != source:
        return False
    return "*" in route.on or event_type in route.on or event_type.split(".", 1)[0] in route.on


def dumps(route: Route) -> str:
    return orjson.dumps(route.model_dump(exclude_none=True)).decode()
