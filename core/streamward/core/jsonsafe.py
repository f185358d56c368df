"""JSON values that can be stored and read back unchanged, checked at the edge.

Request bodies are parsed by Python's ``json`` (FastAPI), which accepts more than the rest
of the system can carry: the API, the runners and the readers serialise and parse with
orjson, which refuses lone surrogates and integers outside 64 bits (a 500 when the input is
stored) and writes NaN / Infinity as ``null`` (a silently different value). This module
refuses those values up front, with a path to the offending item, so they get a 422
``invalid_json_value`` instead. Integers are kept exactly within orjson's range
(``INT_MIN``..``INT_MAX``: int64 and uint64) and refused outside it; readers parse a larger
one as an approximate float, so accepting it would store a different number.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
# the largest integer an IEEE double (a Lua number in the Redis scripts) holds exactly
SAFE_INT_MAX = 2**53 - 1
ERROR_TYPE = "invalid_json_value"


class UnsafeJSON(ValueError):
    """A value that JSON storage would refuse or change; ``path`` locates it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '$'}: {reason}")
        self.path = path or "$"
        self.reason = reason


def _bad_text(s: str) -> bool:
    if s.isascii():  # the common case, checked in C without encoding
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True  # a lone surrogate (from a "\udXXX" escape) has no UTF-8 form
    return False


def check_text(s: str, path: str = "") -> str:
    """``s`` unchanged, or UnsafeJSON when it holds a lone surrogate."""
    if _bad_text(s):
        raise UnsafeJSON(path, "string contains a lone surrogate (invalid Unicode)")
    return s


def check(value: Any) -> Any:
    """``value`` unchanged, or UnsafeJSON for the first item that would not round-trip.

    Iterative (no recursion limit to hit on deep nesting); linear in the value's size.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, path = stack.pop()
        t = type(v)
        if t is str:
            check_text(v, path)
        elif t is dict:
            for k, item in v.items():
                if type(k) is str and _bad_text(k):
                    raise UnsafeJSON(path, "object key contains a lone surrogate")
                stack.append((item, f"{path}.{k}"))
        elif t is list or t is tuple:
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(v))
        elif t is float:
            if not math.isfinite(v):
                raise UnsafeJSON(path, f"{v!r} is not a JSON number (NaN or Infinity)")
        elif t is int and not INT_MIN <= v <= INT_MAX:
            raise UnsafeJSON(path, "integer outside the 64-bit range (-2^63 .. 2^64-1)")
    return value


def _pydantic_check(value: Any) -> Any:
    try:
        return check(value)
    except UnsafeJSON as exc:
        raise PydanticCustomError(
            ERROR_TYPE, "{reason} at {path}", {"path": exc.path, "reason": exc.reason}
        ) from None


def _pydantic_text(value: str) -> str:
    try:
        return check_text(value)
    except UnsafeJSON as exc:
        raise PydanticCustomError(ERROR_TYPE, "{reason}", {"reason": exc.reason}) from None


# free-form JSON fields of a wire schema (an input, a payload, an entry's data)
JSONValue = Annotated[Any, AfterValidator(_pydantic_check)]
# free-text string fields of a wire schema (no pattern that would keep them ASCII)
Text = Annotated[str, AfterValidator(_pydantic_text)]


def _json_int(value: Any) -> Any:
    # JSON Schema's integer is a number with no fraction: 3.0 is one, "3" and true are not
    # (pydantic's lax int would take both; its strict int refuses 3.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("int_from_float", "Input should be a valid integer")
        return int(value)
    return value


# an integer field of a wire schema, as JSON Schema means it; after its constraints, so they
# stay in the JSON schema: ``Annotated[int, Field(ge=1), JSON_INT]``
JSON_INT = BeforeValidator(_json_int)
