"""The runners' transcript ingest (admin token): one run's batch, or several sessions'
batches in one request (a replica's shippers coalesced, runner/ingest_http.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from streamward.api import callbacks
from streamward.api.audit import IngestAudit
from streamward.api.deps import (
    AdminDep,
    AppState,
)
from streamward.api.problems import ProblemError, refusal_problem
from streamward.api.responses import OrjsonResponse
from streamward.api.routes.common import parse_rfc3339_ms
from streamward.api.schemas import (
    IngestBatchRequest,
    IngestBatchResult,
    IngestRequest,
    IngestResult,
)
from streamward.api.tracing import traced_ingest
from streamward.core import tracing
from streamward.core.contract import Entry
from streamward.lua.errors import LeaseError, NotOwner, SeqGap, StaleToken, StreamwardError
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import IngestResult as StoreIngestResult
from streamward.lua.store import Advance, IngestCall

# the runners' ingest alone in a router of its own, included second (api/main.py, after
# invoke): the app tries routes one by one, and this is the second hottest
ingest_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

_AUTH_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "no admin bearer token"},
    403: {"description": "wrong admin token"},
    422: {"description": "invalid input"},
}


@ingest_router.get("/sessions/transcripts/ingest", responses=_AUTH_RESPONSES)
async def ingest_check() -> Response:
    """Whether the bearer token may ingest: what a runner asks once at start, so a missing or
    wrong token stops it before it claims a session (no Redis call)."""
    return OrjsonResponse({"ok": True})


@ingest_router.post(
    "/sessions/transcripts/ingest",
    response_model=IngestResult,
    responses={
        **_AUTH_RESPONSES,
        409: {
            "description": "stale_token: a newer owner exists; not_owner: the lease names another"
        },
    },
)
async def ingest(body: IngestRequest, request: Request) -> Response:
    """Fenced, idempotent append of one run's entries (the runner's transcript shipper)."""
    work = _ingest(body, request)
    return await (traced_ingest(work, body) if tracing.TRACING_ON else work)


async def _ingest(body: IngestRequest, request: Request) -> Response:
    # the runners' hot path: state from the app (no dependency to solve) and the answer
    # rendered directly (no response-model validation); the schema is the same IngestResult
    state: AppState = request.app.state.sw
    store = state.store
    sk = state.keys.session(body.project, body.session_id)
    entries = _entries_of(body)
    stored: Awaitable[StoreIngestResult] = store.ingest(
        sk,
        body.run_id,
        body.token,
        entries,
        replica_id=body.replica_id,
        incarnation=body.incarnation,
        advance=_advance(body),
    )
    if state.audit is not None:
        stored = _audited_ingest(state.audit, body, sk, entries, stored)
    # a batch with an entry a callback may name: the run's callback is read alongside
    cb_read = callbacks.lookup(state.outbox, state.settings, sk, body.run_id, entries)
    if cb_read is None:
        res = await stored
    else:
        # one task, not a gather (two tasks and a future): this runs once per run or so
        reading = asyncio.ensure_future(cb_read)
        try:
            res = await stored
        except BaseException:
            reading.cancel()
            raise
        cb = await reading
        if cb is not None and state.outbox is not None:
            # after the append: a failure here answers 503 and the runner's retry (its
            # entries then duplicates) adds the deliveries again, idempotently
            await callbacks.add_deliveries(state.outbox, state.settings, sk, cb, entries)
    _stored(state, sk, body.run_id, entries, res)
    return OrjsonResponse(_result(res))


@ingest_router.post(
    "/sessions/transcripts/ingest/batch",
    response_model=IngestBatchResult,
    responses={**_AUTH_RESPONSES},
)
async def ingest_batch(body: IngestBatchRequest, request: Request) -> Response:
    """Several sessions' ingests in one request (a runner's shippers coalesced), stored in one
    pipelined Redis round trip. Each item is answered as ``POST .../ingest`` would answer it
    alone: ``{"status": 200, "body": IngestResult}`` or ``{"status": 409|422, "body":
    problem}`` (stale_token, not_owner, seq_gap, invalid timestamp), in order. A Redis
    failure answers the whole request (503), as it would each item."""
    state: AppState = request.app.state.sw
    n = len(body.batches)
    results: list[dict[str, Any] | None] = [None] * n
    calls: list[IngestCall] = []
    slots: list[int] = []
    parsed: list[list[Entry]] = []
    advances: list[Advance | None] = []
    for i, item in enumerate(body.batches):
        sk = state.keys.session(item.project, item.session_id)
        try:
            entries = _entries_of(item)  # named as the single ingest names them
        except ProblemError as exc:
            results[i] = _problem_item(exc)
            continue
        owner = _owner(item)
        calls.append((sk, item.token, item.run_id, owner, entries))
        advances.append(_advance(item))
        slots.append(i)
        parsed.append(entries)
    stored = await state.store.ingest_many(calls, advances) if calls else []
    deliveries: list[tuple[SessionKeys, str, list[Entry]]] = []
    for i, call, entries, res in zip(slots, calls, parsed, stored, strict=True):
        item, sk, run_id = body.batches[i], call[0], call[2]
        if state.audit is not None:
            _audit(state.audit, item, sk, entries, res)
        if isinstance(res, StoreIngestResult):
            _stored(state, sk, run_id, entries, res)
            if callbacks.may_have_callback(state.outbox, state.settings, sk, entries):
                deliveries.append((sk, run_id, entries))
            results[i] = {"status": 200, "body": _result(res)}
        elif isinstance(res, (StaleToken, NotOwner, SeqGap, LeaseError)):
            results[i] = _problem_item(res)
        else:  # not a refusal: fail the request, as the single ingest would (500)
            raise res
    for sk, run_id, entries in deliveries:  # after the append, as in the single ingest
        assert state.outbox is not None
        cb = await state.outbox.run_callback(run_id)
        if cb is not None:
            await callbacks.add_deliveries(state.outbox, state.settings, sk, cb, entries)
    return OrjsonResponse({"results": results})


def _entries_of(body: IngestRequest) -> list[Entry]:
    return [
        Entry(
            e.seq,
            e.type,
            e.data,
            run_id=body.run_id,
            token=body.token,
            ts_ms=None if e.ts is None else parse_rfc3339_ms(e.ts, f"entries.{i}.ts"),
        )
        for i, e in enumerate(body.entries)
    ]


def _advance(body: IngestRequest) -> Advance | None:
    """The run's input to consume after the append (ingestAdvance-7), if the runner asks."""
    a = body.advance
    if a is None:
        return None
    announce = None if a.announce is None else (a.announce.replica_id, a.announce.poison_after)
    return a.entry_id, a.count, announce


def _result(res: StoreIngestResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "accepted": res.accepted,
        "duplicates": res.duplicates,
        "last_seq": res.last_seq,
    }
    if res.peek is not None:
        out["advance"] = res.peek
    return out


def _owner(body: IngestRequest) -> str:
    """The owner signature the lease must hold ("" = token fencing only), as store.ingest."""
    if body.replica_id and body.incarnation:
        return f"{body.replica_id}|{body.incarnation}|{body.token}"
    return ""


def _problem_item(exc: ProblemError | StreamwardError) -> dict[str, Any]:
    resp = refusal_problem(exc)
    return {"status": resp.status_code, "body": orjson.loads(resp.body)}


def _stored(
    state: AppState, sk: SessionKeys, run_id: str, entries: list[Entry], res: StoreIngestResult
) -> None:
    """After an accepted append: a detached invoke waiting here learns its run's start."""
    state.starts.ingested(sk.ref, run_id, entries)
    if state.metrics is not None:
        state.metrics.observe_ingest(res.accepted, res.duplicates)


async def _audited_ingest(
    audit: IngestAudit,
    body: IngestRequest,
    sk: SessionKeys,
    entries: list[Entry],
    stored: Awaitable[StoreIngestResult],
) -> StoreIngestResult:
    """Await ``stored`` (the ``store.ingest`` call) and audit the attempt, whatever its outcome."""
    try:
        res = await stored
    except (StaleToken, NotOwner, SeqGap) as exc:
        _audit(audit, body, sk, entries, exc)
        raise
    _audit(audit, body, sk, entries, res)
    return res


def _audit(
    audit: IngestAudit,
    body: IngestRequest,
    sk: SessionKeys,
    entries: list[Entry],
    outcome: StoreIngestResult | StreamwardError,
) -> None:
    def record(what: str, **extra: int) -> None:
        audit.record(
            session=sk.ref,
            run_id=body.run_id,
            token=body.token,
            replica_id=body.replica_id,
            incarnation=body.incarnation,
            first_seq=entries[0].seq,
            last_seq=entries[-1].seq,
            outcome=what,
            **extra,
        )

    if isinstance(outcome, StoreIngestResult):
        record("accepted", accepted=outcome.accepted, duplicates=outcome.duplicates)
    elif isinstance(outcome, StaleToken):
        record("stale_token", current_token=outcome.epoch)
    elif isinstance(outcome, NotOwner):
        record("not_owner")
    elif isinstance(outcome, SeqGap):
        record("seq_gap")
