"""A session host's ``activate`` that raised: record it, back off, and end the inputs.

Every failed activation writes ``session.activation_failed`` and backs off while holding the
lease (nobody hot-loops on it), then the actor releases and re-queues the session. After
``ACTIVATION_MAX_FAILURES`` in a row the inputs waiting then end ``run.failed``
(``activation_failed``), so every invoke ends (docs/runner.md, "When activate raises").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from streamward.core.backoff import backoff_s
from streamward.lua.inbox import InboxItem
from streamward.runner.inbox import INBOX_WINDOW
from streamward.runner.shipper import Shipper

if TYPE_CHECKING:
    from streamward.runner.lifecycle import Activation, ActivationError

log = logging.getLogger("streamward.runner.lifecycle")

# run_id of the transcript entries about the session rather than one run
SESSION_RUN_ID = "session"
ACTIVATION_BACKOFF_BASE_S, ACTIVATION_BACKOFF_CAP_S = 0.5, 10.0


async def record_failure(
    act: Activation,
    exc: ActivationError,
    meta: dict[str, str],
    shipper: Shipper,
    complete: Callable[[InboxItem], Awaitable[None]],
    max_failures: int,
) -> None:
    """Record a failed ``activate`` and back off (holding the lease: no hot loop). After
    ``max_failures`` in a row, end every waiting input ``run.failed`` (activation_failed)."""
    streams, session = act.streams, act.session
    failures = int(meta.get("activation_failures") or 0) + 1
    cause = exc.__cause__ or exc
    data = {
        "error": str(exc),
        "error_type": type(cause).__name__,
        "failures": failures,
        "replica_id": act.owner[0],
    }
    log.warning("session %s: activate failed (%d in a row): %s", session.ref, failures, exc)
    await shipper.put(SESSION_RUN_ID, "session.activation_failed", data)
    await shipper.flush()
    if failures < max_failures:
        await streams.set_meta(session, activation_failures=failures, released_by="failed")
        await asyncio.sleep(
            backoff_s(failures, ACTIVATION_BACKOFF_BASE_S, ACTIVATION_BACKOFF_CAP_S)
        )
        return
    failed = {
        "error": f"session activation failed {failures} times: {exc}",
        "error_type": "activation_failed",
    }
    items = await streams.read_inbox(session, count=INBOX_WINDOW)
    for item in items:
        await shipper.put(item.run_id, "run.failed", failed)
    await shipper.flush()
    for item in items:
        await complete(item)
    await streams.set_meta(session, activation_failures=0, released_by="failed")
