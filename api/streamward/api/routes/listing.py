"""``GET /v1/sessions`` query parameters: the listing's (both sources), the filters only the
record answers, and the record-backed page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import Query, Request

from streamward.api.listing import ListQuery
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
            session_key=self.session_key,
            metadata=meta,
            created_from_ms=ms(self.created_from, "created_from"),
            created_to_ms=ms(self.created_to, "created_to"),
            updated_from_ms=ms(self.updated_from, "updated_from"),
            updated_to_ms=ms(self.updated_to, "updated_to"),
        )


class ListParams:
    """The listing's query parameters (both sources; a FastAPI dependency)."""

    def __init__(
        self,
        sort: Annotated[
            Literal["created", "updated"],
            Query(description="Order by creation or by last activity (`updated`, the default)."),
        ] = "updated",
        order: Annotated[
            Literal["asc", "desc"], Query(description="`desc` (newest first, default) or `asc`.")
        ] = "desc",
        status: Annotated[str | None, Query(max_length=64, description="Only this status.")] = None,
        route: Annotated[
            str | None, Query(max_length=200, description="Only sessions of this route id.")
        ] = None,
        route_id: Annotated[
            str | None, Query(max_length=200, description="Same as `route` (older name).")
        ] = None,
        type: Annotated[
            str | None, Query(max_length=64, description="Only this session type.")
        ] = None,
        created_after: Annotated[
            str | None, Query(description="Created strictly after; RFC 3339 (offset required).")
        ] = None,
        updated_after: Annotated[
            str | None,
            Query(description="Last activity strictly after; RFC 3339 (offset required)."),
        ] = None,
        active_minutes: Annotated[
            int | None,
            Query(ge=1, le=525_600, description="Last activity within the last N minutes."),
        ] = None,
        source: Annotated[
            Literal["auto", "redis", "record"],
            Query(
                description="`auto`: Redis indexes, the record when a record-only filter or "
                "cursor asks for it; `record` needs STREAMWARD_DATABASE_URL."
            ),
        ] = "auto",
    ) -> None:
        self.sort: Literal["created", "updated"] = sort
        self.order = order
        self.status = status
        if route is not None and route_id is not None and route != route_id:
            raise ProblemError(422, "invalid_filter", "route and route_id disagree")
        self.route_id = route if route is not None else route_id
        self.type = type
        self.created_after = created_after
        self.updated_after = updated_after
        self.active_minutes = active_minutes
        self.source = source

    def query(self, metadata: tuple[tuple[str, str], ...]) -> ListQuery:
        def after(value: str | None, name: str) -> int | None:
            return None if value is None else parse_rfc3339_ms(value, name) + 1

        return ListQuery(
            sort=self.sort,
            desc=self.order == "desc",
            status=self.status,
            route_id=self.route_id,
            session_type=self.type,
            created_min_ms=after(self.created_after, "created_after"),
            updated_min_ms=after(self.updated_after, "updated_after"),
            active_minutes=self.active_minutes,
            metadata=metadata,
        )


METADATA_PREFIX = "metadata."
MAX_METADATA_FILTERS = 16


def metadata_filters(request: Request) -> tuple[tuple[str, str], ...]:
    """The ``metadata.<key>=<value>`` query parameters, sorted by key (one value per key)."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name[len(METADATA_PREFIX) :]
        if not key or len(key) > 200 or len(value) > 1024:
            raise ProblemError(
                422, "invalid_filter", "metadata.<key>: key 1-200 characters, value at most 1024"
            )
        if key in found:
            raise ProblemError(422, "invalid_filter", f"metadata.{key[:64]} given twice")
        found[key] = value
    if len(found) > MAX_METADATA_FILTERS:
        raise ProblemError(
            422, "invalid_filter", f"at most {MAX_METADATA_FILTERS} metadata.<key> filters"
        )
    return tuple(sorted(found.items()))


def wants_record(
    params: ListParams, filters: RecordFilters, cursor: str | None, configured: bool
) -> bool:
    """Whether the record answers: asked for, or a filter or cursor only it knows (a
    record cursor without a record is just not a cursor: 422 ``invalid_cursor``)."""
    if params.source != "auto":
        return params.source == "record"
    legacy = cursor is not None and cursor.startswith("r.") and configured
    return filters.any() or legacy


async def record_page(
    engine: Any,
    keys: Any,
    project: str,
    q: ListQuery,
    filters: RecordFilters,
    cursor: str | None,
    limit: int,
    live: Render,
    now_ms: int,
) -> SessionPage:
    from dataclasses import replace

    from streamward.api.record.listing import list_page

    where = filters.to_filter(q.status)
    created = where.created_from_ms
    if q.created_min_ms is not None:
        created = q.created_min_ms if created is None else max(created, q.created_min_ms)
    where = replace(
        where,
        route_id=q.route_id,
        session_type=q.session_type,
        metadata_fields=q.metadata,
        created_from_ms=created,
    )
    try:
        items, nxt = await list_page(engine, keys, project, q, where, cursor, limit, live, now_ms)
    except ProblemError:
        raise
    except Exception as exc:  # the database is down: this listing has no Redis fallback
        raise ProblemError(
            503, "archive_unavailable", f"record unreachable: {type(exc).__name__}"
        ) from exc
    return SessionPage(items=items, next_cursor=nxt)
