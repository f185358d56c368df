"""``GET /v1/sessions`` from the record: keyset pages over (created_ms | updated_ms,
session_id), in either direction, with filters.

Cursors are the listing's opaque ones (``streamward.api.listing``) with a keyset and a
``src: record`` mark; the older ``r.<created_ms>.<session_id>`` (newest created first) is
still read.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from streamward.api.listing import Cursor, ListQuery, decode_cursor, encode_cursor
from streamward.api.problems import ProblemError
from streamward.api.record.db import SessionFilter, list_sessions
from streamward.api.schemas import SessionOut
from streamward.core.timefmt import rfc3339_opt
from streamward.lua.keys import SessionKeys

LEGACY_CURSOR = re.compile(r"r\.([0-9]{1,20})\.([A-Za-z0-9._:-]{1,200})")
Render = Callable[[SessionKeys], Awaitable[SessionOut | None]]


def parse_cursor(value: str | None, q: ListQuery) -> tuple[Cursor | None, tuple[int, str] | None]:
    """(the cursor, its keyset) or 422 ``invalid_cursor``."""
    if value is None:
        return None, None
    m = LEGACY_CURSOR.fullmatch(value)
    if m is not None:
        if q.sort != "created" or not q.desc:
            raise ProblemError(422, "invalid_cursor", "an r. cursor pages sort=created&order=desc")
        return Cursor(q.fingerprint(), None), (int(m.group(1)), m.group(2))
    if value.startswith("r."):
        raise ProblemError(422, "invalid_cursor", f"not a page cursor: {value[:64]!r}")
    c = decode_cursor(value)
    if c.extra.get("src") != "record" or c.keyset is None:
        raise ProblemError(422, "invalid_cursor", "this cursor pages the Redis listing")
    if c.fingerprint != q.fingerprint():
        raise ProblemError(422, "invalid_cursor", "this cursor was made for another query")
    return c, c.keyset


def _from_row(row: dict[str, Any]) -> SessionOut:
    return SessionOut(
        session_id=row["session_id"],
        project=row["project"],
        status=row["status"],
        created_at=rfc3339_opt(row["created_ms"]),
        updated_at=rfc3339_opt(row["updated_ms"]),
        last_seq=row["last_seq"],
        reason=row["reason"],
        route_id=row["route_id"],
        session_key=row["session_key"],
        generation=row["generation"],
        title=row.get("title"),
    )


async def list_page(
    engine: Any,
    keys: Any,
    project: str,
    q: ListQuery,
    where: SessionFilter,
    cursor: str | None,
    limit: int,
    live: Render,
    now_ms: int,
) -> tuple[list[SessionOut], str | None]:
    """One page: live state from Redis where the session is still there, else the row."""
    c, after = parse_cursor(cursor, q)
    if c is None:
        bound = q.updated_min_ms
        if q.active_minutes is not None:
            recent = now_ms - q.active_minutes * 60_000
            bound = recent if bound is None else max(bound, recent)
        c = Cursor(q.fingerprint(), bound, extra={"src": "record"})
    if c.activity_min_ms is not None:
        where = _with_activity(where, c.activity_min_ms)
    rows = await list_sessions(engine, project, where, after, limit + 1, sort=q.sort, desc=q.desc)
    more = len(rows) > limit
    rows = rows[:limit]
    items: list[SessionOut] = []
    for row in rows:
        out = await live(keys.session(row["project"], row["session_id"]))
        items.append(out if out is not None else _from_row(row))
    if not more:
        return items, None
    last = rows[-1]
    c.keyset = (last["updated_ms" if q.sort == "updated" else "created_ms"], last["session_id"])
    c.extra["src"] = "record"
    return items, encode_cursor(c)


def _with_activity(where: SessionFilter, min_ms: int) -> SessionFilter:
    from dataclasses import replace

    cur = where.updated_from_ms
    return replace(where, updated_from_ms=min_ms if cur is None else max(cur, min_ms))
