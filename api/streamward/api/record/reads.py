"""Reads that span Redis and the archive: below the hot tail an entry comes from
PostgreSQL, with the same id (``<seq>-0``), order and cursor, so a client cannot tell."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record.db import read_entries
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
