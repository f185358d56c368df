"""Route expression functions: ``icontains``, ``lower``, ``upper``, a bounded regex ``matches``,
and ``event_type()`` / ``event_source()`` (the event's envelope, beside the payload root).

Functions are the only way to reach the envelope, so no payload field can shadow it. The
set is closed: ``unknown_functions`` lets the save check refuse any other name (JMESPath
would accept it and fail every event).
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache
from typing import Any

from jmespath import functions
from jmespath.exceptions import JMESPathError

MAX_REGEX_CHARS = 200
# the text a regex runs on: Python's re has no timeout, so its input is bounded too
MAX_MATCH_INPUT_CHARS = 10_000


class RegexRejected(ValueError):
    """A ``matches`` pattern that is too long, invalid, or can backtrack catastrophically."""


class MatchInputTooLong(JMESPathError):
    """``matches`` given more than ``MAX_MATCH_INPUT_CHARS`` characters (an evaluation error)."""


# sre_parse: the tree re compiles from (private, so typeshed may not list it)
_parse: Any = importlib.import_module("re._parser").parse
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def _risky(items: Any, in_repeat: bool) -> bool:
    """A repeat inside a repeat, or an alternation under a repeat: exponential backtracking
    (``(a+)+``, ``(a|a)*``). Possessive repeats and atomic groups never backtrack."""
    for op, arg in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            _, hi, body = arg
            unbounded_ish = hi > 1
            if unbounded_ish and in_repeat:
                return True
            if _risky(body, in_repeat or unbounded_ish):
                return True
        elif name in ("POSSESSIVE_REPEAT", "ATOMIC_GROUP"):
            continue
        elif name == "BRANCH":
            if in_repeat:
                return True
            if any(_risky(b, in_repeat) for b in arg[1]):
                return True
        elif name == "SUBPATTERN":
            if _risky(arg[-1], in_repeat):
                return True
        elif name in ("ASSERT", "ASSERT_NOT") and _risky(arg[1], in_repeat):
            return True
    return False


@lru_cache(maxsize=256)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """A checked, compiled pattern (cached: routes reuse a handful of patterns)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise RegexRejected(f"regex longer than {MAX_REGEX_CHARS} characters")
    try:
        tree = _parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise RegexRejected(f"invalid regex: {exc}") from None
    if _risky(tree, False):
        raise RegexRejected("regex nests repeats (catastrophic backtracking): not allowed")
    return compiled


class RouteFunctions(functions.Functions):
    """JMESPath's built-ins plus the route functions, bound to one event's envelope."""

    def __init__(self, event_type: str = "", event_source: str = "") -> None:
        super().__init__()
        self._event_type = event_type
        self._event_source = event_source

    @functions.signature()
    def _func_event_type(self) -> str:
        return self._event_type

    @functions.signature()
    def _func_event_source(self) -> str:
        return self._event_source

    @functions.signature({"types": ["string"]})
    def _func_lower(self, s: str) -> str:
        return s.lower()

    @functions.signature({"types": ["string"]})
    def _func_upper(self, s: str) -> str:
        return s.upper()

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_icontains(self, s: str | None, sub: str) -> bool:
        # null haystack (a missing field) is simply "does not contain"
        return s is not None and sub.casefold() in s.casefold()

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_matches(self, s: str | None, pattern: str) -> bool:
        if s is None:
            return False
        if len(s) > MAX_MATCH_INPUT_CHARS:
            raise MatchInputTooLong(f"matches() input over {MAX_MATCH_INPUT_CHARS} characters")
        try:
            return compile_regex(pattern).search(s) is not None
        except RegexRejected as exc:
            raise JMESPathError(str(exc)) from None


KNOWN_FUNCTIONS = frozenset(RouteFunctions.FUNCTION_TABLE)


def unknown_functions(tree: Any) -> list[str]:
    """Names of functions called in a parsed tree that are not in ``KNOWN_FUNCTIONS``."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if node.get("type") == "function_expression" and node.get("value") not in KNOWN_FUNCTIONS:
            out.append(str(node.get("value")))
        stack.extend(c for c in node.get("children", ()) if isinstance(c, dict))
    return sorted(set(out))


def literal_patterns(tree: Any) -> list[str]:
    """The literal patterns of ``matches(x, 'pattern')`` calls (checked at save time)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        kids = [c for c in node.get("children", ()) if isinstance(c, dict)]
        call = node.get("type") == "function_expression" and node.get("value") == "matches"
        if call and len(kids) == 2 and kids[1].get("type") == "literal":
            value = kids[1].get("value")
            if isinstance(value, str):
                out.append(value)
        stack.extend(kids)
    return out
