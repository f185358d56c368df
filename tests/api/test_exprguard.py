"""Unit tests of the JMESPath limits (no Redis): what is refused at save, what evaluation does."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from jmespath.exceptions import JMESPathError

from streamward.api import exprguard as g
from streamward.api.routing import evaluate
from streamward.api.schemas import Route

# hypothesis writes `text` literals, an old JMESPath spelling the lexer warns about
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

ROUTE_EXPRS = [
    "payload.action == 'created'",
    "payload.issue.pull_request.html_url",
    "{text: payload.comment.body, author: payload.comment.user.login}",
    "payload.items[?price > `10`].{id: id, tags: tags[*].name} | [0:5]",
    "join(', ', payload.labels[*].name)",
    "payload." + ".".join(["x"] * 300),  # long, but flat
]


@pytest.mark.parametrize("expr", ROUTE_EXPRS)
def test_ordinary_route_expressions_pass(expr: str) -> None:
    g.check(expr)


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("|".join(["a"] * 666), "nested deeper"),  # 201 at save and 500 per event before
        ("(" * 600 + "a" + ")" * 600, "nested deeper"),  # RecursionError in the parser
        ("!" * 1500 + "a", "nested deeper"),  # no brackets, still recursive
        ("[" * 40 + "a" + "]" * 40, "nested deeper"),
        ("a" * 2001, "longer than"),
        ("[@,@]|" * 7 + "@", "multiply"),  # doubles at every stage
        ("payload.s | " + " | ".join(["join('', [@,@])"] * 10), "multiply"),
        ("[" + ",".join(["@"] * 65) + "]", "multiply"),
        ("payload.[" + ",".join(["a.b"] * 300) + "]", "parts"),
        ("payload.[[[", "Incomplete expression"),
    ],
)
def test_limits_refuse(expr: str, why: str) -> None:
    with pytest.raises(g.ExpressionRejected, match=why):
        g.check(expr)


@given(st.integers(min_value=g.MAX_EXPR_DEPTH + 1, max_value=999))
def test_any_pipe_chain_over_the_depth_is_refused(n: int) -> None:
    with pytest.raises(g.ExpressionRejected):
        g.check("|".join(["a"] * n))


@given(st.integers(min_value=1, max_value=g.MAX_EXPR_DEPTH - 1))
def test_pipe_chains_within_the_depth_compile_and_run(n: int) -> None:
    expr = "|".join(["a"] * n)
    g.check(expr)
    assert g.search(expr, {"a": None}) is None


_EXPR_CHARS = "ab@.|[]{}()*,!&?:`'=<>0123 "


@hsettings(max_examples=300)
@given(st.text(alphabet=_EXPR_CHARS, max_size=200))
def test_check_only_ever_rejects(expr: str) -> None:
    # whatever the text, the guard answers a compiled expression or ExpressionRejected
    with contextlib.suppress(g.ExpressionRejected):
        g.check(expr)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from("abp"), kids),
    max_leaves=20,
)


@hsettings(max_examples=300)
@given(st.text(alphabet=_EXPR_CHARS, max_size=60), JSON)
def test_accepted_expressions_fail_only_in_known_ways(expr: str, doc: Any) -> None:
    try:
        g.check(expr)
    except g.ExpressionRejected:
        return
    with contextlib.suppress(JMESPathError, g.BudgetExceeded):
        g.search(expr, doc)


def test_step_budget_stops_a_projection_over_a_big_list() -> None:
    doc = {"items": list(range(50_000))}
    expr = "items[*].[@, @, @]"
    g.check(expr)
    with pytest.raises(g.BudgetExceeded):
        g.search(expr, doc)
    assert len(g.search(expr, doc, max_steps=10**6)) == 50_000


def test_size_estimate_stops_early_on_shared_values() -> None:
    # 2^40 copies of one list: serialising would never end, the estimate answers at once
    value: Any = ["x" * 100]
    for _ in range(40):
        value = [value, value]
    assert g.json_size_over(value, 256 * 1024)
    assert not g.json_size_over({"a": [1, "bc", None, True]}, 1000)


SIMPLE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(0, 9) | st.text("abc xyz", max_size=8),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text("kq", max_size=3), kids),
    max_leaves=40,
)


@given(JSON, st.integers(0, 300))
def test_size_estimate_is_a_lower_bound(value: Any, limit: int) -> None:
    if g.json_size_over(value, limit):
        assert len(orjson.dumps(value)) > limit


@given(SIMPLE_JSON, st.integers(0, 300))
def test_size_estimate_is_exact_for_ascii_and_digits(value: Any, limit: int) -> None:
    assert g.json_size_over(value, limit) == (len(orjson.dumps(value)) > limit)


def _route(**fields: Any) -> Route:
    base: dict[str, Any] = {
        "route_id": "r",
        "source": "s",
        "on": ["*"],
        "session": {"key_expr": "k"},
    }
    return Route.model_validate({**base, **fields})


def test_evaluate_turns_every_failure_into_this_routes_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipes = "|".join(["a"] * 667)
    bad_filter = _route(filter=pipes)
    with caplog.at_level(logging.WARNING, logger="streamward.api.routing"):
        for k in range(5):
            m = evaluate(bad_filter, "t", {"k": k})
            assert (m.action, m.field, m.code) == ("filtered", "filter", "expression_error")
    # five events, one log line
    assert len([r for r in caplog.records if "r: filter failed" in r.getMessage()]) == 1
    m = evaluate(_route(session={"key_expr": "abs(payload)"}), "t", {"k": 1})
    assert (m.action, m.code) == ("no_key", "expression_error")
    m = evaluate(_route(input_expr="[@,@]|" * 10 + "@"), "t", {"k": 1})
    assert (m.action, m.key, m.code) == ("failed", "1", "expression_error")
    # 62 characters, 122 bytes: the cap counts bytes
    m = evaluate(_route(input_expr="s"), "t", {"k": 1, "s": "é" * 60}, 100)
    assert (m.action, m.code) == ("input_too_large", "input_too_large")
    m = evaluate(_route(input_expr="s"), "t", {"k": 1, "s": "é" * 30}, 100)
    assert m.action == "deliver" and m.input_json == orjson.dumps("é" * 30).decode()
