"""Poison inputs: a run that took down ``POISON_AFTER_OWNERS`` owners in a row is ended.

Two counts find it. ``peekInbox`` records (fenced, in meta ``head_taken``) each owner that
takes the inbox's head to run it, so an input whose owners die before any of its
``run.started`` reaches the log is still counted; the owner about to run it a next time
ends it instead. And at a claim:

A run's ``attempt`` (kept in ``sw:{S}:runs`` from its ``run.started``) counts its owners: a
restart after an owner death re-runs it with attempt + 1. An owner "taken down" is one that
never wrote the run's terminal entry: killed, crashed, wedged until its replica lease
expired, or self-fenced (a fenced actor writes nothing, so ``active_run_id`` stays set). The
next claimer finds the run still active; at attempt >= N it ends it with ``run.failed``
(``error_type: poison``) and completes its inbox entry, so it is never delivered again and
the inputs behind it run. Re-submitting it is the operator's decision (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streamward.lua.inbox import InboxMeta
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.metrics import Metrics
from streamward.runner.shipper import Shipper

log = logging.getLogger("streamward.runner.actor")

POISON_ERROR_TYPE = "poison"


def poison_data(attempts: int, previous_replica_id: str | None) -> dict[str, Any]:
    """The ``run.failed`` data of a poison run."""
    return {
        "error": f"the input took down {attempts} owners in a row; it is not run again",
        "error_type": POISON_ERROR_TYPE,
        "attempts": attempts,
        "previous_replica_id": previous_replica_id,
    }


async def end_if_poison(
    store: LeaseStore,
    streams: Streams,
    metrics: Metrics,
    session: SessionKeys,
    shipper: Shipper,
    complete: Callable[[InboxMeta], Awaitable[None]],
    run_id: str,
    after_owners: int,
    taken_down: int | None = None,
) -> bool:
    """End the active run ``run_id`` as poison when its attempt reached ``after_owners``
    (0: never). True when ended (the caller applies no ``on_owner_death`` policy then).
    ``taken_down``: owners the head input took down, as ``peekInbox`` counted them (it also
    sees owners that died before any ``run.started`` of it reached the log)."""
    if after_owners <= 0:
        return False
    run = await streams.run_state(session, run_id)
    attempts = (run.attempt or 1) if run is not None else 1
    if taken_down is not None:
        attempts = max(attempts, taken_down)
    if attempts < after_owners:
        return False
    prev = run.replica_id if run is not None else None
    await shipper.put(run_id, "run.failed", poison_data(attempts, prev))
    await shipper.flush()
    # the running input is the inbox's oldest; dying here leaves a terminal run at the
    # head, which the next owner completes without running it
    peek = await store.peek_inbox(session, 1, with_head=False)
    if peek.metas and peek.metas[0].run_id == run_id:
        await complete(peek.metas[0])
    await streams.mark_poison(session, run_id)
    metrics.poison_inputs.inc()
    metrics.runs.labels("failed").inc()
    log.error(
        "session %s: run %s took down %d owners in a row: ended as poison, not re-run",
        session.ref, run_id, attempts,
    )  # fmt: skip
    return True
