"""``GET /v1/sessions`` filters that need the record, and the record-backed page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Query

from streamward.api.problems import ProblemError
from streamward.api.routes.common import parse_rfc3339_ms
from streamward.api.schemas import SessionPage

if TYPE_CHECKING:
    from streamward.api.record.db import SessionFilter
    from streamward.api.record.listing import Render

_TIME = "RFC 3339 (offset required); needs the record."


class RecordFilters:
    """Filters only the record answers (a FastAPI dependency of query parameters)."""

    def __init__(
        self,
        route_id: Annotated[
            str | None, Query(max_length=200, description="Only this route.")
        ] = None,
        session_key: Annotated[
            str | None, Query(max_length=1000, description="Only this event key.")
        ] = None,
        metadata: Annotated[
            str | None,
            Query(max_length=4096, description="A JSON object the session's meta contains."),
        ] = None,
        created_from: Annotated[
            str | None, Query(description=f"Created at or after; {_TIME}")
        ] = None,
        created_to: Annotated[str | None, Query(description=f"Created before; {_TIME}")] = None,
        updated_from: Annotated[
            str | None, Query(description=f"Updated at or after; {_TIME}")
        ] = None,
        updated_to: Annotated[str | None, Query(description=f"Updated before; {_TIME}")] = None,
    ) -> None:
        self.route_id = route_id
        self.session_key = session_key
        self.metadata = metadata
        self.created_from = created_from
        self.created_to = created_to
        self.updated_from = updated_from
        self.updated_to = updated_to

    def any(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def to_filter(self, status: str | None) -> SessionFilter:
        from streamward.api.record.db import SessionFilter

        def ms(value: str | None, name: str) -> int | None:
            return None if value is None else parse_rfc3339_ms(value, name)

        meta: dict[str, Any] | None = None
        if self.metadata is not None:
            try:
                parsed = orjson.loads(self.metadata)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ProblemError(422, "invalid_metadata", "metadata must be a JSON object")
            meta = parsed
        return SessionFilter(
            status=status,
            route_id=self.route_id,
            session_key=self.session_key,
            metadata=meta,
            created_from_ms=ms(self.created_from, "created_from"),
            created_to_ms=ms(self.created_to, "created_to"),
            updated_from_ms=ms(self.updated_from, "updated_from"),
            updated_to_ms=ms(self.updated_to, "updated_to"),
        )


async def record_page(
    engine: Any,
    keys: Any,
    project: str,
    status: str | None,
    filters: RecordFilters,
    cursor: str | None,
    limit: int,
    live: Render,
) -> SessionPage:
    from streamward.api.record.listing import list_page

    where = filters.to_filter(status)
    try:
        items, nxt = await list_page(engine, keys, project, where, cursor, limit, live)
    except ProblemError:
        raise
    except Exception as exc:  # the database is down: this listing has no Redis fallback
        raise ProblemError(
            503, "archive_unavailable", f"record unreachable: {type(exc).__name__}"
        ) from exc
    return SessionPage(items=items, next_cursor=nxt)
