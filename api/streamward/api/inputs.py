"""An input as stored at enqueue: serialised once, and refused (413) over the input cap."""

from __future__ import annotations

from typing import Any

import orjson

from streamward.api.problems import ProblemError


def encode_input(
    value: Any, max_bytes: int, what: str = "input", code: str = "input_too_large"
) -> str:
    """``value`` as the JSON text the inbox stores; 413 ``input_too_large`` above
    ``max_bytes`` (``STREAMWARD_MAX_INPUT_BYTES``).

    The cap is on the serialised input, not the request body (``MAX_BODY_BYTES`` stays the
    outer bound): every byte of it is kept in Redis until the run ends, parsed by a runner,
    and handed to the handler, so it bounds what one caller can make the fleet carry.
    """
    try:
        raw = orjson.dumps(value)
    except TypeError as exc:  # checked by the schema (core/jsonsafe.py); kept as a backstop
        raise ProblemError(422, "invalid_json_value", f"{what}: {exc}") from None
    if len(raw) > max_bytes:
        raise ProblemError(
            413,
            code,
            f"{what} is {len(raw)} bytes as JSON; the limit is {max_bytes}",
            bytes=len(raw),
            max_bytes=max_bytes,
        )
    return raw.decode()
