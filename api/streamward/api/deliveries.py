"""Per-delivery pieces of ``POST /v1/events/{source}``: sessionless routes and the dedupe of
redelivered webhooks (docs/routing.md#deliveries)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from streamward.api import invoke as invocation
from streamward.api.deps import AppState, quotas_of
from streamward.api.problems import ProblemError
from streamward.api.schemas import EventResult, EventSession, Route
from streamward.core.tracing import inbox_traceparent
from streamward.lua.errors import SessionBusy
from streamward.lua.sources import IN_FLIGHT, SourceStore

log = logging.getLogger("streamward.api.deliveries")
RETRY_IN_FLIGHT_S = 1


def once_ids(route: Route, source: str, delivery_id: str | None) -> tuple[str, str]:
    """(session id, run id) of a sessionless route's event: derived from the delivery id when
    the source sends one, so a redelivery reaches the same session and run, else random."""
    if delivery_id is None:
        h = uuid.uuid4().hex
    else:
        h = hashlib.sha256(f"{route.project}/{source}/{delivery_id}".encode()).hexdigest()
    return f"{route.route_id}.once.{h[:24]}", f"run_{h[:32]}"


async def start_once(
    state: AppState, route: Route, source: str, delivery_id: str | None, input_json: str
) -> EventSession:
    """A route without ``session``: a fresh session and run for this event.

    The run id doubles as the enqueue's idempotency key: the same delivery delivered twice
    (after its dedupe window, or racing past it) appends one run, not two."""
    session_id, run_id = once_ids(route, source, delivery_id)
    sk = state.keys.session(route.project, session_id)
    quotas = quotas_of(state)
    # the project's quotas first: a refused event leaves no meta behind (raises a 429 refusal)
    ticket = await quotas.admit_before_writes(state.streams, sk)
    await state.streams.set_meta(sk, route_id=route.route_id, source=source)
    try:
        enq = await quotas.enqueue(
            state.store,
            sk,
            run_id,
            input_json,
            idempotency_key=run_id,
            source=f"event:{route.route_id}",
            traceparent=inbox_traceparent(),
            default_type=state.settings.default_type,  # no session config: the default type
            admitted=ticket,
        )
    except SessionBusy:  # not reachable with multitask enqueue; kept for the type's sake
        return EventSession(route_id=route.route_id, session_id=session_id, action="rejected")
    if not enq.duplicate:
        await invocation.wake_owner(state.store, state.streams, sk, enq, "enqueue", "event")
    return EventSession(
        route_id=route.route_id, session_id=session_id, run_id=enq.run_id, action="started"
    )


async def replay_or_claim(
    sources: SourceStore, project: str, source: str, delivery_id: str
) -> EventResult | None:
    """None when this request owns the delivery; the first answer (``duplicate: true``) for a
    redelivery; 409 ``delivery_in_progress`` while the first copy is still delivering."""
    stored = await sources.claim(project, source, delivery_id)
    if stored is None:
        return None
    if stored == IN_FLIGHT:
        raise ProblemError(
            409,
            "delivery_in_progress",
            f"delivery {delivery_id!r} is being delivered by another request; retry shortly",
            headers={"Retry-After": str(RETRY_IN_FLIGHT_S)},
        )
    first = EventResult.model_validate_json(stored)
    return first.model_copy(update={"duplicate": True})


async def route_claimed(
    sources: SourceStore,
    project: str,
    source: str,
    delivery_id: str,
    routing: Coroutine[Any, Any, EventResult],
) -> EventResult:
    """Route a claimed delivery and store its answer for the redeliveries."""
    try:
        result = await routing
    except Exception:
        # nothing was delivered (503, or routes unreadable): the sender's retry may run.
        # A cancelled request keeps its claim (it may have delivered): it lapses on its own.
        with contextlib.suppress(Exception):
            await sources.release(project, source, delivery_id)
        raise
    try:
        await sources.answer(project, source, delivery_id, result.model_dump_json())
    except Exception as exc:  # delivered all the same: answer it; the claim lapses
        log.warning(
            "source %s/%s: delivery %r answered but not stored: %r",
            project,
            source,
            delivery_id,
            exc,
        )
    return result
