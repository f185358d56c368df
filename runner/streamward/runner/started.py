"""The data of a run's ``run.started`` entry: who runs it, which attempt, and the input if
it is small.

``run.started`` gates the caller's detached 202 (which reads ``replica_id`` from it) and
feeds the run state the ingest script keeps. It once carried the whole input, so a large
input made the entry larger than ``SHIP_ENTRY_MAX_BYTES`` and the shipper replaced all of
it with a truncation marker: the run's owner was lost (``owner.replica_id: ""``). The
input now travels apart: the handler gets it from the inbox, and ``run.started`` copies it
only up to ``STARTED_INPUT_MAX_BYTES``; past that it says so and how large it was.
"""

from __future__ import annotations

from typing import Any

import orjson


def started_data(replica_id: str, attempt: int, input: Any, input_max_bytes: int) -> dict[str, Any]:
    """``{"replica_id", "attempt", "input"}``; with ``"input": null, "input_truncated": true,
    "input_bytes": N`` instead when the input serialises larger than ``input_max_bytes``."""
    data: dict[str, Any] = {"replica_id": replica_id, "attempt": attempt, "input": input}
    if input is None or isinstance(input, bool | int | float):
        return data  # a scalar of a few bytes: no need to measure it
    size = len(orjson.dumps(input))
    if size > input_max_bytes:
        data.update(input=None, input_truncated=True, input_bytes=size)
    return data
