"""The archiver's write of one batch: a single SQL statement, so a single round trip.

The entries, the runs whose state changed, what the entries tell about their runs, the new
ownership events and the session row with its archived position go in one ``INSERT`` with
data-modifying CTEs. A statement is atomic on its own, so the position commits with the
entries it covers, and on the archiver's autocommit engine there is no BEGIN / COMMIT round
trip. Rows travel as arrays (``unnest``): a batch of 500 entries is one Bind, with no
per-row work in SQLAlchemy, and each entry's data goes as the JSON text Redis holds (cast to
``json``), never decoded and encoded again. Every insert is an upsert or ``DO NOTHING``, so
a batch written twice (a retry, two archivers) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from streamward.lua.archive import RawEntry

# the entry types whose data says something about their run (run_facts): only these are
# decoded
FACT_TYPES = frozenset({"run.started", "run.completed", "run.failed"})
ERROR_MAX_CHARS = 4000

_FACTS = """
        input_bytes = coalesce(excluded.input_bytes, r.input_bytes),
        outputs = coalesce(excluded.outputs, r.outputs),
        error = coalesce(excluded.error, r.error)"""

# $1 project, $2 session; then each table's columns as arrays, then the session row
PASS_SQL = f"""
WITH entries AS (
    INSERT INTO transcript_entries (project, session_id, seq, type, run_id, token, data, ts_ms)
    SELECT $1, $2, u.seq, u.type, u.run_id, u.token, u.data::json, u.ts_ms
    FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[])
        AS u(seq, type, run_id, token, data, ts_ms)
    ON CONFLICT (project, session_id, seq) DO NOTHING
), states AS (
    INSERT INTO runs AS r (project, session_id, run_id, status, attempt, replica_id, token,
                           started_id, last_id, input_bytes, outputs, error, updated_ms)
    SELECT $1, $2, u.* FROM unnest($9::text[], $10::text[], $11::int[], $12::text[],
        $13::bigint[], $14::text[], $15::text[], $16::int[], $17::int[], $18::text[],
        $19::bigint[])
        AS u(run_id, status, attempt, replica_id, token, started_id, last_id, input_bytes,
             outputs, error, updated_ms)
    ON CONFLICT (project, session_id, run_id) DO UPDATE SET
        status = excluded.status, attempt = excluded.attempt,
        replica_id = excluded.replica_id, token = excluded.token,
        started_id = excluded.started_id, last_id = excluded.last_id,
        updated_ms = excluded.updated_ms,{_FACTS}
), facts AS (
    INSERT INTO runs AS r (project, session_id, run_id, status, input_bytes, outputs, error)
    SELECT $1, $2, u.run_id, '', u.input_bytes, u.outputs, u.error
    FROM unnest($20::text[], $21::int[], $22::int[], $23::text[])
        AS u(run_id, input_bytes, outputs, error)
    ON CONFLICT (project, session_id, run_id) DO UPDATE SET{_FACTS}
), history AS (
    INSERT INTO ownership_events (project, session_id, event_id, event, replica_id,
                                  incarnation, token, reason, at_ms)
    SELECT $1, $2, u.* FROM unnest($24::text[], $25::text[], $26::text[], $27::text[],
        $28::bigint[], $29::text[], $30::bigint[])
        AS u(event_id, event, replica_id, incarnation, token, reason, at_ms)
    ON CONFLICT (project, session_id, event_id) DO NOTHING
)
INSERT INTO sessions AS s (project, session_id, route_id, session_key, generation, status,
    reason, title, metadata, previous_session_id, created_ms, updated_ms, last_activity_ms,
    last_seq, archived_seq, archived_history_id, archived_ms)
VALUES ($1, $2, $31, $32, $33, $34, $35, $36, $37::jsonb, $38, $39, $40, $41, $42, $43,
    $44, $45)
ON CONFLICT (project, session_id) DO UPDATE SET
    route_id = excluded.route_id, session_key = excluded.session_key,
    generation = excluded.generation, status = excluded.status, reason = excluded.reason,
    title = excluded.title, metadata = excluded.metadata,
    previous_session_id = excluded.previous_session_id, created_ms = excluded.created_ms,
    updated_ms = excluded.updated_ms, last_activity_ms = excluded.last_activity_ms,
    last_seq = excluded.last_seq, archived_ms = excluded.archived_ms,
    -- the position only ever grows (several archivers); stream ids compare as (ms, seq)
    archived_seq = greatest(s.archived_seq, excluded.archived_seq),
    archived_history_id = CASE
        WHEN (split_part(excluded.archived_history_id, '-', 1)::numeric,
              split_part(excluded.archived_history_id, '-', 2)::numeric)
           > (split_part(s.archived_history_id, '-', 1)::numeric,
              split_part(s.archived_history_id, '-', 2)::numeric)
        THEN excluded.archived_history_id ELSE s.archived_history_id END
"""


def _opt_int(v: Any) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def run_facts(entries: Sequence[RawEntry]) -> dict[str, dict[str, Any]]:
    """What a run's entries tell about it: input size (``run.started``), outputs count
    (``run.completed``), error (``run.failed``). Only those entries' data is decoded."""
    facts: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.type not in FACT_TYPES or not e.run_id:
            continue
        value = orjson.loads(e.data)
        data = value if isinstance(value, dict) else {}
        got = facts.setdefault(e.run_id, {})
        if e.type == "run.started":
            size = data.get("input_bytes")
            if not isinstance(size, int):
                size = len(orjson.dumps(data.get("input")))
            got["input_bytes"] = size
        elif e.type == "run.completed" and isinstance(data.get("outputs"), int):
            got["outputs"] = data["outputs"]
        elif e.type == "run.failed" and data.get("error") is not None:
            got["error"] = str(data["error"])[:ERROR_MAX_CHARS]
    return {run_id: f for run_id, f in facts.items() if f}


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column (what ``unnest`` takes)."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def pass_args(
    project: str,
    session_id: str,
    *,
    entries: Sequence[RawEntry],
    runs: dict[str, dict[str, Any]],
    history: Sequence[tuple[str, dict[str, str]]],
    meta: dict[str, str],
    archived_seq: int,
    archived_history_id: str,
    last_activity_ms: int,
    now_ms: int,
) -> tuple[Any, ...]:
    """``PASS_SQL``'s 45 parameters."""
    facts = run_facts(entries)
    state_rows = []
    for run_id, s in runs.items():
        f = facts.pop(run_id, {})  # one row per run in one statement: state and facts merged
        state_rows.append((
            run_id, str(s.get("status", "")), _opt_int(s.get("attempt")),
            s.get("replica_id") or None, _opt_int(s.get("token")),
            s.get("started_id") or None, s.get("last_id") or None,
            _opt_int(s.get("input_bytes")) if f.get("input_bytes") is None else f["input_bytes"],
            _opt_int(s.get("outputs")) if f.get("outputs") is None else f["outputs"],
            s.get("error") or None if f.get("error") is None else f["error"],
            _opt_int(s.get("updated_ms")),
        ))  # fmt: skip
    fact_rows = [
        (run_id, f.get("input_bytes"), f.get("outputs"), f.get("error"))
        for run_id, f in facts.items()
    ]
    history_rows = [
        (
            event_id,
            f.get("event", ""),
            f.get("replica") or None,
            f.get("incarnation") or None,
            int(f.get("token") or 0),
            f.get("reason", ""),
            int(f["ms"]) if f.get("ms") else None,
        )
        for event_id, f in history
    ]
    entry_rows = [(e.seq, e.type, e.run_id, e.token, e.data, e.ts_ms) for e in entries]
    created = _opt_int(meta.get("created_ms")) or now_ms
    session = (
        meta.get("route_id") or None,
        meta.get("session_key") or None,
        _opt_int(meta.get("generation")),
        meta.get("status", ""),
        meta.get("reason") or meta.get("last_release_reason") or None,
        meta.get("title") or None,
        orjson.dumps(meta).decode(),
        meta.get("previous_session_id") or None,
        created,
        _opt_int(meta.get("updated_ms")) or created,
        max(last_activity_ms, created),
        _opt_int(meta.get("last_seq")) or 0,
        archived_seq,
        archived_history_id,
        now_ms,
    )
    return (
        project,
        session_id,
        *_columns(entry_rows, 6),
        *_columns(state_rows, 11),
        *_columns(fact_rows, 4),
        *_columns(history_rows, 7),
        *session,
    )


async def write_pass(conn: AsyncConnection, args: tuple[Any, ...]) -> None:
    """Run ``PASS_SQL`` (the driver's own placeholders: no SQLAlchemy compile per call)."""
    await conn.exec_driver_sql(PASS_SQL, args)
