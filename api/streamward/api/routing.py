"""Route evaluation: JMESPath compiled once, chat key templates, event → (key, input)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from streamward.api.problems import ProblemError
from streamward.api.schemas import Route


@lru_cache(maxsize=4096)
def compile_expr(expr: str) -> ParsedResult:
    return jmespath.compile(expr)


def validate_route(route: Route) -> None:
    """Compile every expression; 422 ``invalid_expression`` naming the field and the error."""
    exprs = {
        "filter": route.filter,
        "session.key_expr": route.session.key_expr,
        "input_expr": route.input_expr,
    }
    for field, expr in exprs.items():
        if expr is None:
            continue
        try:
            compile_expr(expr)
        except JMESPathError as exc:
            raise ProblemError(
                422,
                "invalid_expression",
                f"{field}: {exc}".replace("\n", " "),
                field=field,
                expression=expr,
            ) from None
    s = route.session
    if (s.key_expr is None) == (s.key_template is None):
        raise ProblemError(
            422,
            "invalid_route",
            "session: set exactly one of key_expr and key_template",
            field="session.key_expr",
        )


def _text(value: Any) -> str | None:
    """A key part as text; None/empty/containers are not usable keys."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text or None


def _dig(payload: Any, *paths: str) -> Any:
    for path in paths:
        cur = payload
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def chat_key(payload: Any, isolation: str) -> str | None:
    """The built-in chat key rule (the table in docs/routing.md)."""
    chat = _text(_dig(payload, "chat.id", "chat_id", "channel.id", "channel"))
    if chat is None:
        return None
    kind = _text(_dig(payload, "chat.type", "chat_type", "channel_type")) or "group"
    thread = _text(_dig(payload, "thread.id", "thread_id", "thread_ts"))
    user = _text(_dig(payload, "user.id", "user_id", "user", "from.id"))
    if kind in ("dm", "direct", "private", "im"):
        return f"dm:{chat}:thread:{thread}" if thread else f"dm:{chat}"
    key = f"chat:{chat}:thread:{thread}" if thread else f"chat:{chat}"
    if isolation == "per_user":
        if user is None:
            return None
        key += f":user:{user}"
    return key


@dataclass(frozen=True, slots=True)
class Match:
    """What one route makes of one event."""

    action: str  # filtered | no_key | deliver
    key: str | None = None
    input: Any = None


def evaluate(route: Route, event_type: str, payload: Any) -> Match:
    """Filter, key and input of ``route`` for an event (never raises for odd payloads)."""
    doc = {"type": event_type, "payload": payload}
    # expressions compile on save but can still fail on a payload (a function given the
    # wrong type): a failing filter filters, a failing key is no key, a failing input
    # expression hands the run the whole event
    if route.filter is not None:
        try:
            passed = compile_expr(route.filter).search(doc)
        except JMESPathError:
            passed = False
        if not passed:
            return Match("filtered")
    if route.session.key_template == "chat":
        key = chat_key(payload, route.session.isolation)
    else:
        assert route.session.key_expr is not None
        try:
            key = _text(compile_expr(route.session.key_expr).search(doc))
        except JMESPathError:
            key = None
    if key is None:
        return Match("no_key")
    run_input: Any = doc
    if route.input_expr is not None:
        try:
            run_input = compile_expr(route.input_expr).search(doc)
        except JMESPathError:
            run_input = doc
    return Match("deliver", key=key[:2000], input=run_input)


def route_matches(route: Route, source: str, event_type: str) -> bool:
    return route.source == source and ("*" in route.on or event_type in route.on)


def dumps(route: Route) -> str:
    return orjson.dumps(route.model_dump(exclude_none=True)).decode()
