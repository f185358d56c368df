"""``GET /v1/sessions`` from the record: keyset pages, newest first, with filters.

A cursor is ``r.<created_ms>.<session_id>`` (the last item of the previous page); the Redis
listing's cursors are plain numbers, so the two never mix.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from streamward.api.problems import ProblemError
from streamward.api.record.db import SessionFilter, list_sessions
from streamward.api.schemas import SessionOut
from streamward.core.timefmt import rfc3339_opt
from streamward.lua.keys import SessionKeys

CURSOR = re.compile(r"r\.([0-9]{1,20})\.([A-Za-z0-9._:-]{1,200})")
Render = Callable[[SessionKeys], Awaitable[SessionOut | None]]


def parse_cursor(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    m = CURSOR.fullmatch(value)
    if m is None:
        raise ProblemError(422, "invalid_cursor", f"not a page cursor: {value[:64]!r}")
    return int(m.group(1)), m.group(2)


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
    )


async def list_page(
    engine: Any,
    keys: Any,
    project: str,
    where: SessionFilter,
    cursor: str | None,
    limit: int,
    live: Render,
) -> tuple[list[SessionOut], str | None]:
    """One page: live state from Redis where the session is still there, else the row."""
    rows = await list_sessions(engine, project, where, parse_cursor(cursor), limit)
    items: list[SessionOut] = []
    for row in rows:
        out = await live(keys.session(row["project"], row["session_id"]))
        items.append(out if out is not None else _from_row(row))
    last = rows[-1] if len(rows) == limit else None
    return items, None if last is None else f"r.{last['created_ms']}.{last['session_id']}"
