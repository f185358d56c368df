"""Reads that span Redis and the archive: below the hot tail an entry comes from
PostgreSQL, with the same id (``<seq>-0``), order and cursor, so a client cannot tell."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record.archiver import DB_DOWN
from streamward.api.record.db import read_entries, read_history
from streamward.api.schemas import OwnershipEvent
from streamward.core.timefmt import rfc3339_opt
from streamward.lua.entries import Entry
from streamward.lua.keys import SessionKeys
from streamward.lua.streams import Streams

NO_END = 2**62


async def span(
    engine: AsyncEngine,
    streams: Streams,
    sk: SessionKeys,
    after: str,
    count: int,
    from_redis: list[Entry],
) -> list[Entry]:
    """``from_redis`` (Redis's answer for entries after ``after``) with what the hot-tail trim
    removed in front of it read from the archive: the first ``count`` entries after ``after``.

    The archiver trims only below what it committed, so whatever Redis lacks is archived.
    """
    after_seq = int(after.split("-", 1)[0])
    if from_redis and from_redis[0].seq == after_seq + 1:
        return from_redis  # contiguous: nothing was trimmed in between (the usual case)
    if not from_redis and after_seq >= await streams.last_seq(sk):
        return []  # at the end
    below = from_redis[0].seq if from_redis else NO_END
    older = await read_entries(engine, sk.project, sk.session_id, after_seq, below, count)
    return (older + from_redis)[:count]


async def with_archived_history(
    engine: AsyncEngine, sk: SessionKeys, events: list[OwnershipEvent], limit: int
) -> list[OwnershipEvent]:
    """Redis's ownership events merged with the archived ones, newest first, ``limit`` of
    them. A database outage answers with Redis's alone (the recent part is there)."""
    try:
        rows = await read_history(engine, sk.project, sk.session_id, limit)
    except DB_DOWN:
        return events
    seen = {e.id for e in events}
    merged = events + [
        OwnershipEvent(
            id=r.event_id,
            event=r.event,
            replica_id=r.replica_id,
            incarnation=r.incarnation,
            token=r.token,
            reason=r.reason,
            at=rfc3339_opt(r.at_ms),
        )
        for r in rows
        if r.event_id not in seen
    ]
    merged.sort(key=lambda e: _stream_id(e.id), reverse=True)
    return merged[:limit]


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, n = value.partition("-")
    return int(ms), int(n or 0)
