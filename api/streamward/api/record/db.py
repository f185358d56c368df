"""The record's database access: the engine (SQLAlchemy 2 async over asyncpg), the
archiver's idempotent writes and the API's reads. Only this module writes SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from streamward.api.record.tables import ownership_events, runs, sessions, transcript_entries
from streamward.lua.entries import Entry


def async_url(url: str) -> str:
    """``postgresql://...`` (what operators write) as the asyncpg dialect's URL."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        # a dead database must fail a call quickly, not hang a request or the archiver
        connect_args={"timeout": 5, "command_timeout": 30},
        json_serializer=lambda v: orjson.dumps(v).decode(),
        json_deserializer=orjson.loads,
    )


@dataclass(frozen=True, slots=True)
class ArchivedSession:
    """How far one session is archived."""

    archived_seq: int
    archived_history_id: str


@dataclass(frozen=True, slots=True)
class HistoryRow:
    event_id: str
    event: str
    replica_id: str | None
    incarnation: str | None
    token: int
    reason: str
    at_ms: int | None


async def archived(conn: AsyncConnection, project: str, session_id: str) -> ArchivedSession:
    row = (
        await conn.execute(
            sa.select(sessions.c.archived_seq, sessions.c.archived_history_id).where(
                sessions.c.project == project, sessions.c.session_id == session_id
            )
        )
    ).first()
    return ArchivedSession(0, "0-0") if row is None else ArchivedSession(row[0], row[1])


async def put_entries(
    conn: AsyncConnection, project: str, session_id: str, entries: Sequence[Entry]
) -> None:
    """Insert entries; ones already there are left alone (an entry never changes)."""
    if not entries:
        return
    rows = [
        {
            "project": project,
            "session_id": session_id,
            "seq": e.seq,
            "type": e.type,
            "run_id": e.run_id,
            "token": e.token,
            "data": e.data,
            "ts_ms": e.ts_ms or 0,
        }
        for e in entries
    ]
    await conn.execute(_PUT_ENTRIES, rows)


async def put_history(
    conn: AsyncConnection,
    project: str,
    session_id: str,
    items: Sequence[tuple[str, dict[str, str]]],
) -> None:
    if not items:
        return
    rows = [
        {
            "project": project,
            "session_id": session_id,
            "event_id": event_id,
            "event": f.get("event", ""),
            "replica_id": f.get("replica") or None,
            "incarnation": f.get("incarnation") or None,
            "token": int(f.get("token") or 0),
            "reason": f.get("reason", ""),
            "at_ms": int(f["ms"]) if f.get("ms") else None,
        }
        for event_id, f in items
    ]
    await conn.execute(_PUT_HISTORY, rows)


def _opt_int(v: Any) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


async def put_runs(
    conn: AsyncConnection, project: str, session_id: str, states: dict[str, dict[str, Any]]
) -> None:
    """Upsert each run's latest state (a run's row changes as it runs)."""
    if not states:
        return
    rows = [
        {
            "project": project,
            "session_id": session_id,
            "run_id": run_id,
            "status": str(s.get("status", "")),
            "attempt": _opt_int(s.get("attempt")),
            "replica_id": s.get("replica_id") or None,
            "token": _opt_int(s.get("token")),
            "started_id": s.get("started_id") or None,
            "last_id": s.get("last_id") or None,
            "input_bytes": _opt_int(s.get("input_bytes")),
            "outputs": _opt_int(s.get("outputs")),
            "error": s.get("error") or None,
            "updated_ms": _opt_int(s.get("updated_ms")),
        }
        for run_id, s in states.items()
    ]
    await conn.execute(_PUT_RUNS, rows)


async def put_session(
    conn: AsyncConnection,
    project: str,
    session_id: str,
    meta: dict[str, str],
    *,
    archived_seq: int,
    archived_history_id: str,
    last_activity_ms: int,
    now_ms: int,
) -> None:
    """Upsert the session row; ``archived_seq`` only ever grows (several archivers)."""
    created = _opt_int(meta.get("created_ms")) or now_ms
    row = {
        "project": project,
        "session_id": session_id,
        "route_id": meta.get("route_id") or None,
        "session_key": meta.get("session_key") or None,
        "generation": _opt_int(meta.get("generation")),
        "status": meta.get("status", ""),
        "reason": meta.get("reason") or meta.get("last_release_reason") or None,
        "title": meta.get("title") or None,
        "metadata": meta,
        "previous_session_id": meta.get("previous_session_id") or None,
        "created_ms": created,
        "updated_ms": _opt_int(meta.get("updated_ms")) or created,
        "last_activity_ms": max(last_activity_ms, created),
        "last_seq": _opt_int(meta.get("last_seq")) or 0,
        "archived_seq": archived_seq,
        "archived_history_id": archived_history_id,
        "archived_ms": now_ms,
    }
    await conn.execute(_PUT_SESSION, row)


def _id_key(col: Any) -> Any:
    """A stream id ``<ms>-<n>`` as a sortable numeric pair (PostgreSQL row comparison)."""
    return sa.tuple_(
        sa.cast(sa.func.split_part(col, "-", 1), sa.Numeric),
        sa.cast(sa.func.split_part(col, "-", 2), sa.Numeric),
    )


# -- the archiver's statements, built once (building an upsert costs more than running it) --


# a run's facts read from its entries (put_run_facts): a state update from Redis, which has
# none of them, keeps them
RUN_FACTS = ("input_bytes", "outputs", "error")


def _runs_upsert() -> Any:
    stmt = insert(runs)
    keep = {"project", "session_id", "run_id"}
    updates: dict[str, Any] = {c.name: stmt.excluded[c.name] for c in runs.c if c.name not in keep}
    for name in RUN_FACTS:
        updates[name] = sa.func.coalesce(stmt.excluded[name], runs.c[name])
    return stmt.on_conflict_do_update(
        index_elements=[runs.c.project, runs.c.session_id, runs.c.run_id], set_=updates
    )


def run_facts(entries: Sequence[Entry]) -> dict[str, dict[str, Any]]:
    """What a run's entries tell about it: input size (``run.started``), outputs count
    (``run.completed``), error (``run.failed``)."""
    facts: dict[str, dict[str, Any]] = {}
    for e in entries:
        data = e.data if isinstance(e.data, dict) else {}
        got = facts.setdefault(e.run_id, {})
        if e.type == "run.started":
            size = data.get("input_bytes")
            if not isinstance(size, int):
                size = len(orjson.dumps(data.get("input")))
            got["input_bytes"] = size
        elif e.type == "run.completed" and isinstance(data.get("outputs"), int):
            got["outputs"] = data["outputs"]
        elif e.type == "run.failed" and data.get("error") is not None:
            got["error"] = str(data["error"])[:4000]
    return {run_id: f for run_id, f in facts.items() if f and run_id}


async def put_run_facts(
    conn: AsyncConnection, project: str, session_id: str, facts: dict[str, dict[str, Any]]
) -> None:
    """Set what the entries told (rows of runs not archived yet are created)."""
    if not facts:
        return
    rows = [
        {
            "project": project,
            "session_id": session_id,
            "run_id": run_id,
            "status": "",
            **{name: f.get(name) for name in RUN_FACTS},
        }
        for run_id, f in facts.items()
    ]
    await conn.execute(_PUT_RUN_FACTS, rows)


def _run_facts_upsert() -> Any:
    stmt = insert(runs)
    return stmt.on_conflict_do_update(
        index_elements=[runs.c.project, runs.c.session_id, runs.c.run_id],
        set_={n: sa.func.coalesce(stmt.excluded[n], runs.c[n]) for n in RUN_FACTS},
    )


def _session_upsert() -> Any:
    """Upsert a session row; ``archived_seq`` / ``archived_history_id`` only ever grow
    (several archivers)."""
    stmt = insert(sessions)
    ex = stmt.excluded
    keep = {"project", "session_id", "archived_seq", "archived_history_id"}
    updates: dict[str, Any] = {c.name: ex[c.name] for c in sessions.c if c.name not in keep}
    updates["archived_seq"] = sa.func.greatest(sessions.c.archived_seq, ex.archived_seq)
    # stream ids compare as (ms, seq): the larger of the two, as numbers
    newer = _id_key(ex.archived_history_id) > _id_key(sessions.c.archived_history_id)
    updates["archived_history_id"] = sa.case(
        (newer, ex.archived_history_id), else_=sessions.c.archived_history_id
    )
    return stmt.on_conflict_do_update(
        index_elements=[sessions.c.project, sessions.c.session_id], set_=updates
    )


_PUT_ENTRIES = insert(transcript_entries).on_conflict_do_nothing()
_PUT_HISTORY = insert(ownership_events).on_conflict_do_nothing()
_PUT_RUNS = _runs_upsert()
_PUT_SESSION = _session_upsert()
_PUT_RUN_FACTS = _run_facts_upsert()


# -- reads (the API) -----------------------------------------------------------------------


async def read_entries(
    engine: AsyncEngine, project: str, session_id: str, after_seq: int, below_seq: int, count: int
) -> list[Entry]:
    """Archived entries with ``after_seq < seq < below_seq``, oldest first, at most ``count``."""
    t = transcript_entries
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(t.c.seq, t.c.type, t.c.data, t.c.run_id, t.c.token, t.c.ts_ms)
            .where(
                t.c.project == project,
                t.c.session_id == session_id,
                t.c.seq > after_seq,
                t.c.seq < below_seq,
            )
            .order_by(t.c.seq)
            .limit(count)
        )
        return [
            Entry(seq, typ, data, run_id=run_id, token=token, ts_ms=ts_ms, id=f"{seq}-0")
            for seq, typ, data, run_id, token, ts_ms in result
        ]


async def read_history(
    engine: AsyncEngine, project: str, session_id: str, count: int
) -> list[HistoryRow]:
    """The archived ownership events, newest first."""
    e = ownership_events
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(
                e.c.event_id,
                e.c.event,
                e.c.replica_id,
                e.c.incarnation,
                e.c.token,
                e.c.reason,
                e.c.at_ms,
            )
            .where(e.c.project == project, e.c.session_id == session_id)
            .order_by(_id_key(e.c.event_id).desc())
            .limit(count)
        )
        return [HistoryRow(r[0], r[1], r[2], r[3], r[4] or 0, r[5], r[6]) for r in result]


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """``GET /v1/sessions`` filters over the record (every one optional)."""

    status: str | None = None
    route_id: str | None = None
    session_key: str | None = None
    # a JSON object the session's meta must contain (``metadata @> ...``)
    metadata: dict[str, Any] | None = None
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    updated_from_ms: int | None = None
    updated_to_ms: int | None = None
    # the listing's own filters (docs/api.md, "Listing sessions"): both sources take them
    session_type: str | None = None
    # top-level keys of the session's ``metadata`` (a JSON object text in meta): each
    # value compared with the JSON scalar's text (``->>``)
    metadata_fields: tuple[tuple[str, str], ...] = ()


async def list_sessions(
    engine: AsyncEngine,
    project: str,
    where: SessionFilter,
    before: tuple[int, str] | None,
    count: int,
    *,
    sort: str = "created",
    desc: bool = True,
) -> list[dict[str, Any]]:
    """Sessions by (created_ms | updated_ms, session_id), newest first unless ``desc`` is
    False, strictly after the keyset ``before`` in that order."""
    s = sessions
    q = sa.select(s).where(s.c.project == project)
    if where.session_type is not None:
        q = q.where(sa.func.coalesce(s.c.metadata["type"].astext, "default") == where.session_type)
    if where.metadata_fields:
        text = s.c.metadata["metadata"].astext
        # only a JSON object text is cast: anything else would fail the whole query
        doc = sa.case((text.like("{%"), sa.cast(text, pg.JSONB)), else_=None)
        for key, value in where.metadata_fields:
            q = q.where(doc.op("->>")(key) == value)
    if where.status is not None:
        q = q.where(s.c.status == where.status)
    if where.route_id is not None:
        q = q.where(s.c.route_id == where.route_id)
    if where.session_key is not None:
        q = q.where(s.c.session_key == where.session_key)
    if where.metadata is not None:
        q = q.where(s.c.metadata.contains(where.metadata))
    if where.created_from_ms is not None:
        q = q.where(s.c.created_ms >= where.created_from_ms)
    if where.created_to_ms is not None:
        q = q.where(s.c.created_ms < where.created_to_ms)
    if where.updated_from_ms is not None:
        q = q.where(s.c.updated_ms >= where.updated_from_ms)
    if where.updated_to_ms is not None:
        q = q.where(s.c.updated_ms < where.updated_to_ms)
    col = s.c.updated_ms if sort == "updated" else s.c.created_ms
    if before is not None:
        pos = sa.tuple_(col, s.c.session_id)
        q = q.where(pos < sa.tuple_(*before) if desc else pos > sa.tuple_(*before))
    if desc:
        q = q.order_by(col.desc(), s.c.session_id.desc()).limit(count)
    else:
        q = q.order_by(col.asc(), s.c.session_id.asc()).limit(count)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]
