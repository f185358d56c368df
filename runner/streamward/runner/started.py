"""A run's start: the data of its ``run.started`` entry (who runs it, which attempt, and the
input if it is small), and the notice that answers a detached invoke waiting for it.

``run.started`` feeds the run state the ingest script keeps, and answers a detached invoke
(which reads ``replica_id`` from it) whose API process did not hear the start notice first.
It once carried the whole input, so a large input made the entry larger than
``SHIP_ENTRY_MAX_BYTES`` and the shipper replaced all of it with a truncation marker: the
run's owner was lost (``owner.replica_id: ""``). The input now travels apart: the handler
gets it from the inbox, and ``run.started`` copies it only up to
``STARTED_INPUT_MAX_BYTES``; past that it says so and how large it was.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from streamward.lua.streams import Streams
from streamward.lua.work import StartNotice

log = logging.getLogger("streamward.runner.started")
_sending: set[asyncio.Task[None]] = set()  # notices in flight (a task needs a reference)


def announce(streams: Streams, channel: str, notice: StartNotice) -> None:
    """Publish ``notice`` on the waiting API process's ``channel``, without waiting for it:
    the run does not wait, and a notice lost (Redis down, the API gone) only makes that
    invoke learn the start from the log, as without notices."""
    task = asyncio.create_task(streams.publish_start(channel, notice))
    _sending.add(task)
    task.add_done_callback(_sent)


def _sent(task: asyncio.Task[None]) -> None:
    _sending.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("start notice not published: %r", exc)


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
