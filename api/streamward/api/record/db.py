"""The record's database access: the engine (SQLAlchemy 2 async over asyncpg), the
archiver's position and the API's reads. Only this module and ``writes`` (the archiver's
one-statement batch) write SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from streamward.api.record.tables import ownership_events, sessions, transcript_entries
from streamward.lua.entries import Entry


def async_url(url: str) -> str:
    """``postgresql://...`` (what operators write) as the asyncpg dialect's URL."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def make_engine(url: str, pool_size: int = 5, *, writer: bool = False) -> AsyncEngine:
    """``writer``: the archiver's engine. Autocommit (its one write per batch is a single
    statement, atomic on its own: no BEGIN / COMMIT round trips) and no ping per checkout
    (three round trips outside a transaction; a dead connection fails the pass instead,
    is invalidated, and the pass is retried)."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if writer else {}
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        pool_pre_ping=not writer,
        **options,
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


def _id_key(col: Any) -> Any:
    """A stream id ``<ms>-<n>`` as a sortable numeric pair (PostgreSQL row comparison)."""
    return sa.tuple_(
        sa.cast(sa.func.split_part(col, "-", 1), sa.Numeric),
        sa.cast(sa.func.split_part(col, "-", 2), sa.Numeric),
    )


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
