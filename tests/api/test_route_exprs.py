"""Payload-rooted route expressions: the route functions, their guards, the legacy root."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jmespath.exceptions import JMESPathError

from streamward.api import exprfuncs
from streamward.api.exprguard import ExpressionRejected, check, search
from streamward.api.routing import dumps, evaluate, load_route
from streamward.api.schemas import Route


def route(**fields: Any) -> Route:
    base: dict[str, Any] = {"route_id": "r", "source": "gh", "on": ["*"]}
    base["session"] = {"key_expr": "issue.number"}
    return Route.model_validate({**base, **fields})


def test_functions() -> None:
    doc = {"body": "Hi @OpenHands", "n": None}
    assert search("icontains(body, '@openhands')", doc) is True
    assert search("icontains(n, 'x')", doc) is False  # a missing field contains nothing
    assert search("lower(body)", doc) == "hi @openhands"
    assert search("upper(body)", doc) == "HI @OPENHANDS"
    assert search("matches(body, '@[Oo]pen')", doc) is True
    assert search("matches(body, '^x')", doc) is False


def test_envelope_through_functions_cannot_be_shadowed() -> None:
    doc = {"type": "payload's own type", "event_type": "also payload"}
    got = search("[type, event_type(), event_source()]", doc, event_type="t", event_source="s")
    assert got == ["payload's own type", "t", "s"]
    r = route(filter="event_type() == 'issue_comment.created' && event_source() == 'gh'")
    assert evaluate(r, "issue_comment.created", {"issue": {"number": 1}}).action == "deliver"
    assert evaluate(r, "issue_comment.deleted", {"issue": {"number": 1}}).action == "filtered"


@pytest.mark.parametrize(
    "expr",
    [
        "contains_ci(a, 'x')",  # unknown: used to save and then be false for every event
        "matches(a, '(a+)+$')",  # nested repeats: exponential backtracking
        "matches(a, '(a|aa)*b')",  # alternation under a repeat
        "matches(a, '(')",  # invalid
        "matches(a, '" + "a" * 201 + "')",  # over the pattern cap
        "[@,@]|" * 30 + "lower(@)",  # the limits still apply with the new functions
    ],
)
def test_refused_at_save(expr: str) -> None:
    with pytest.raises(ExpressionRejected):
        check(expr)


def test_matches_guards_at_evaluation() -> None:
    # a pattern from the payload is checked when used; a long input is an error, not a hang
    with pytest.raises(JMESPathError):
        search("matches(s, p)", {"s": "aaaa", "p": "(a*)*$"})
    with pytest.raises(exprfuncs.MatchInputTooLong):
        search("matches(s, 'a')", {"s": "a" * (exprfuncs.MAX_MATCH_INPUT_CHARS + 1)})
    r = route(filter="matches(s, 'a')")
    m = evaluate(r, "t", {"s": "a" * 20_000, "issue": {"number": 1}})
    assert (m.action, m.code) == ("filtered", "expression_error")
    assert exprfuncs.compile_regex("a+b") is exprfuncs.compile_regex("a+b")  # cached


def test_stored_route_without_expr_root_keeps_its_meaning() -> None:
    legacy = {
        "route_id": "old",
        "source": "gh",
        "on": ["issue_comment"],
        "filter": "payload.action == 'created' && type == 'issue_comment'",
        "session": {"key_expr": "payload.issue.number", "idle_timeout_seconds": 300},
    }
    r = load_route(orjson.dumps(legacy))
    assert r.expr_root == "envelope"
    assert r.session is not None
    # idle used to mean "unload from memory": it stays that, not a reset
    assert (r.session.close_delay_seconds, r.session.idle_timeout_seconds) == (300, None)
    m = evaluate(r, "issue_comment", {"action": "created", "issue": {"number": 4}})
    assert (m.action, m.key) == ("deliver", "4")
    # saved again through the API it keeps expr_root: loads the same
    assert load_route(dumps(r)) == r
    new = route()
    assert orjson.loads(dumps(new))["expr_root"] == "payload" and load_route(dumps(new)) == new


def test_seed_field_names() -> None:
    r = route(
        session={"key_expr": "a", "on_sandbox_death": "drop", "session_timeout_seconds": None}
    )
    assert r.session is not None
    assert r.session.on_owner_death == "drop" and r.session.session_timeout_seconds is None
    with pytest.raises(ValueError, match="disagree"):
        route(session={"key_expr": "a", "on_sandbox_death": "drop", "on_owner_death": "queue"})
