"""A run's trace: the ``run`` span continuing the trace context its inbox entry carries, the
``ship`` spans of the transcript POSTs under it (their ``traceparent`` header lets the
receiving API's ``ingest`` span join), and the run's Redis calls as children.

With tracing off nothing here runs unless the entry carries a caller's ``traceparent``: then
the run's log lines carry that trace id and its ingest requests forward the header, so the
logs of all three processes line up. docs/operations.md, "Tracing".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from streamward.core import logs, tracing
from streamward.core.contract import RUN_FAILED, TERMINAL_TYPES, Entry
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import InboxPeek
from streamward.lua.scripts import Announce
from streamward.lua.store import LeaseStore

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Traced(Protocol):
    """What a run's trace needs of its shipper."""

    session: SessionKeys
    token: int
    replica_id: str | None
    # run id -> (traceparent its ingest requests send, the run span or None when off)
    traces: dict[str, tuple[str, Any]]


@contextlib.contextmanager
def run_scope(shipper: Traced, item: InboxItem, attempt: int) -> Iterator[None]:
    """Around a run: its span (tracing on), or the caller's trace ids (off, a traceparent in
    the entry); the shipper sends the run's batches with the matching ``traceparent``."""
    run_id = item.run_id
    try:
        if not tracing.TRACING_ON:
            ids = logs.parse_traceparent(item.traceparent)
            if ids is None:
                yield
                return
            shipper.traces[run_id] = (item.traceparent, None)
            with logs.bind(trace_id=ids[0], span_id=ids[1]):
                yield
            return
        attrs = {
            "streamward.project": shipper.session.project,
            "streamward.session.id": shipper.session.session_id,
            "streamward.run.id": run_id,
            "streamward.run.attempt": attempt,
            "streamward.run.source": item.source,
            "streamward.replica.id": shipper.replica_id or "",
            "streamward.lease.token": shipper.token,
        }
        # "" (an entry without trace context): the run starts a trace of its own
        with tracing.span("run", "consumer", attrs, parent=item.traceparent) as span:
            shipper.traces[run_id] = (tracing.current_traceparent(), span)
            yield
    finally:
        shipper.traces.pop(run_id, None)


def ship_span(trace: tuple[str, Any], url: str, batch: Sequence[Entry]) -> Any:
    """The ``ship`` client span of one ingest POST, under the run span (tracing on)."""
    traceparent, run_span = trace
    for e in batch:
        if e.type in TERMINAL_TYPES and run_span is not None:  # the run's outcome, as shipped
            run_span.set_attribute("streamward.run.outcome", e.type.removeprefix("run."))
            if e.type == RUN_FAILED:
                from opentelemetry.trace import Status, StatusCode

                run_span.set_status(Status(StatusCode.ERROR, "run failed"))
    attrs = {
        "http.request.method": "POST",
        "url.full": url,
        "streamward.run.id": batch[0].run_id,
        "streamward.ingest.entries": len(batch),
        "streamward.ingest.first_seq": batch[0].seq,
        "streamward.ingest.last_seq": batch[-1].seq,
    }
    return tracing.span("ship", "client", attrs, parent=traceparent)


def ship_headers(headers: dict[str, str], trace: tuple[str, Any]) -> dict[str, str]:
    """The ingest request's headers with the trace context: the current (ship) span's when
    tracing is on, else the caller's traceparent as carried."""
    traceparent = tracing.current_traceparent() if tracing.TRACING_ON else trace[0]
    return {**headers, "traceparent": traceparent}


def note_status(span: Span | None, status_code: int) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))


class TracedStore(LeaseStore):
    """The runner's store with tracing on: a run's fenced Redis writes as its child spans
    (calls outside a run make no span: ``tracing.child_span``)."""

    async def complete_input(self, session: SessionKeys, token: int, entry_id: str) -> int:
        with tracing.child_span("completeInput", _redis("completeInput", session)):
            return await super().complete_input(session, token, entry_id)

    async def advance_inbox(
        self,
        session: SessionKeys,
        token: int,
        entry_id: str,
        count: int,
        announce: Announce | None = None,
    ) -> InboxPeek:
        with tracing.child_span("advanceInbox", _redis("advanceInbox", session)):
            return await super().advance_inbox(session, token, entry_id, count, announce)

    async def save_state(self, session: SessionKeys, owner: tuple[str, str, int], data: str) -> int:
        with tracing.child_span("saveState", _redis("saveState", session)):
            return await super().save_state(session, owner, data)


def _redis(operation: str, session: SessionKeys) -> dict[str, Any]:
    return {
        "db.system.name": "redis",
        "db.operation.name": operation,
        "streamward.session.id": session.session_id,
    }
