"""Bounded JMESPath: limits checked at compile time and a step budget while evaluating.

A route's expressions run on every event of its source, in the API process. An expression
is therefore refused at save time when it is too long, too deeply nested, too big, or can
multiply the size of its input (``[@,@] | [@,@] | ...`` doubles at every stage), and every
evaluation counts its steps so a payload cannot make an accepted expression run away.
The limits are documented in docs/routing.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.lexer import Lexer
from jmespath.parser import ParsedResult
from jmespath.visitor import Options, TreeInterpreter

from streamward.api.exprfuncs import (
    RegexRejected,
    RouteFunctions,
    compile_regex,
    literal_patterns,
    unknown_functions,
)

MAX_EXPR_CHARS = 2000
# nesting of brackets and of the parsed tree: the parser and the interpreter both recurse
# per level, so a bound far below the interpreter's recursion limit keeps them safe
MAX_EXPR_DEPTH = 32
MAX_EXPR_NODES = 512
# how many times an expression's output can hold its input, estimated from the tree
MAX_EXPR_FANOUT = 64
# interpreter steps (tree nodes visited, projected elements included) per evaluation
MAX_EVAL_STEPS = 100_000

# chaining nodes apply their right side to what their left side produced
_CHAIN = {
    "subexpression",
    "pipe",
    "projection",
    "value_projection",
    "filter_projection",
    "index_expression",
}
_OPEN = {"lbracket", "lbrace", "lparen", "filter"}
_CLOSE = {"rbracket", "rbrace", "rparen"}


class ExpressionRejected(ValueError):
    """The expression is not allowed (syntax or limits); the message says why."""


class BudgetExceeded(RuntimeError):
    """An evaluation took more than ``MAX_EVAL_STEPS`` steps."""


def _bracket_depth(expr: str) -> int:
    # from the token stream, which the lexer builds without recursion: refuses what would
    # recurse deeply in the parser before the parser ever sees it
    depth = peak = 0
    tokens: Iterator[Any] = Lexer().tokenize(expr)
    for tok in tokens:
        kind = tok["type"]
        if kind in _OPEN:
            depth += 1
            peak = max(peak, depth)
        elif kind in _CLOSE:
            depth -= 1
    return peak


def _children(node: Any) -> list[Any]:
    return [c for c in node.get("children", ()) if isinstance(c, dict)]


def tree_size(node: Any) -> tuple[int, int]:
    """(depth, node count) of a parsed tree, walked without recursion."""
    depth = nodes = 0
    stack = [(node, 1)]
    while stack:
        cur, d = stack.pop()
        nodes += 1
        depth = max(depth, d)
        stack.extend((c, d + 1) for c in _children(cur))
    return depth, nodes


def fanout(node: Any) -> float:
    """An upper estimate of how many times the output can hold the input.

    Chaining multiplies (the right side runs on what the left side made), a multiselect
    or a function adds its parts, a comparison yields a boolean. Called only on trees
    within ``MAX_EXPR_DEPTH``, so the recursion is bounded.
    """
    kind = node.get("type")
    kids = _children(node)
    if kind == "literal":
        return 1.0  # a constant: at most the expression's own length
    if kind in ("comparator", "not_expression"):
        return 0.0
    if kind in ("and_expression", "or_expression"):
        return max((fanout(c) for c in kids), default=1.0)
    if kind in _CHAIN or (kind == "function_expression" and node.get("value") == "map"):
        return math.prod(max(1.0, fanout(c)) for c in kids)
    if kind in ("multi_select_list", "multi_select_dict", "function_expression"):
        return sum(fanout(c) for c in kids)
    if not kids:
        return 1.0  # field, current, identity, index, slice
    return sum(fanout(c) for c in kids)  # key_val_pair, flatten, expref, anything new


def check(expr: str) -> ParsedResult:
    """Compile ``expr`` within the limits; ``ExpressionRejected`` says what is wrong."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ExpressionRejected(f"longer than {MAX_EXPR_CHARS} characters")
    try:
        if _bracket_depth(expr) > MAX_EXPR_DEPTH:
            raise ExpressionRejected(f"nested deeper than {MAX_EXPR_DEPTH} levels")
        parsed = jmespath.compile(expr)
    except ExpressionRejected:
        raise
    except RecursionError:
        raise ExpressionRejected(f"nested deeper than {MAX_EXPR_DEPTH} levels") from None
    except Exception as exc:  # JMESPathError and whatever else the parser may raise
        raise ExpressionRejected(str(exc).replace("\n", " ")) from None
    depth, nodes = tree_size(parsed.parsed)
    if depth > MAX_EXPR_DEPTH:
        raise ExpressionRejected(f"nested deeper than {MAX_EXPR_DEPTH} levels ({depth})")
    if nodes > MAX_EXPR_NODES:
        raise ExpressionRejected(f"more than {MAX_EXPR_NODES} parts ({nodes})")
    unknown = unknown_functions(parsed.parsed)
    if unknown:
        raise ExpressionRejected(f"unknown function {unknown[0]}()")
    for pattern in literal_patterns(parsed.parsed):
        try:
            compile_regex(pattern)
        except RegexRejected as exc:
            raise ExpressionRejected(str(exc)) from None
    factor = fanout(parsed.parsed)
    if factor > MAX_EXPR_FANOUT:
        raise ExpressionRejected(
            f"can multiply its input {factor:.0f} times (at most {MAX_EXPR_FANOUT})"
        )
    return parsed


@lru_cache(maxsize=4096)
def compile_checked(expr: str) -> ParsedResult:
    """``check`` once per expression (rejections are not cached, they are cheap to redo)."""
    return check(expr)


class _Budgeted(TreeInterpreter):
    def __init__(self, max_steps: int, funcs: RouteFunctions) -> None:
        super().__init__(Options(custom_functions=funcs))
        self.steps_left = max_steps

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise BudgetExceeded(f"more than {MAX_EVAL_STEPS} evaluation steps")
        return super().visit(node, *args, **kwargs)


def search(
    expr: str,
    doc: Any,
    max_steps: int = MAX_EVAL_STEPS,
    *,
    event_type: str = "",
    event_source: str = "",
) -> Any:
    """Evaluate a checked expression with a step budget (raises what evaluation raises);
    ``event_type()`` / ``event_source()`` answer the given envelope."""
    funcs = RouteFunctions(event_type, event_source)
    return _Budgeted(max_steps, funcs).visit(compile_checked(expr).parsed, doc)


def json_size_over(value: Any, limit_bytes: int) -> bool:
    """Whether ``value`` surely serialises to more than ``limit_bytes`` bytes.

    Counted without serialising and stopped as soon as the limit is passed: every item
    adds at least one byte, so the walk takes at most about ``limit_bytes`` steps however
    big the value is (a value sharing one object many times is counted as often as it
    would be written). The count is a lower bound of the compact JSON size (one byte per
    character, one per number): the caller checks the exact size of what passed.
    """
    total = 0
    stack = [value]
    while stack:
        cur = stack.pop()
        if isinstance(cur, str):
            total += len(cur) + 2
        elif isinstance(cur, dict):
            # braces, commas, and per key its quotes and colon
            total += 2 + max(0, len(cur) - 1)
            for k, v in cur.items():
                total += len(str(k)) + 3
                stack.append(v)
        elif isinstance(cur, (list, tuple)):
            total += 2 + max(0, len(cur) - 1)
            stack.extend(cur)
        elif cur is False:
            total += 5
        elif cur is None or cur is True:
            total += 4
        else:
            total += 1  # a number: at least one digit
        if total > limit_bytes:
            return True
    return False
