"""Transcript reads below Redis's hot tail, for a handler's ``ctx.transcript()``.

With the record on, the archiver trims a session's Redis log below what it has committed to
PostgreSQL and keeps a hot tail (docs/record.md). The runner does not talk to PostgreSQL:
when Redis lacks entries a handler asks for, it asks the API over the channel it already
has (the runners' admin token, the shipper's connection pool) for
``GET /admin/sessions/{id}/transcript``, which answers the very page a client's
``GET /v1/sessions/{id}/transcript`` gets: the same ids, order and cursors.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import httpx

from streamward.lua.keys import SessionKeys
from streamward.lua.streams import LogEntry
from streamward.runner.ingest_http import IngestHTTP, IngestHTTPError

HttpGetter = httpx.AsyncClient | IngestHTTP
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class TranscriptUnavailable(RuntimeError):
    """Entries below the hot tail were asked for and could not be read: the API or its
    database is down. Nothing partial is returned in their place; a retry may succeed."""


class ArchiveReads(Protocol):
    """Where the runner reads what the hot-tail trim removed from Redis."""

    async def page(self, session: SessionKeys, after_seq: int, limit: int) -> list[LogEntry]:
        """The first ``limit`` entries with ``seq > after_seq``, oldest first."""
        ...


class ApiTranscript:
    """``ArchiveReads`` through the API's admin transcript page."""

    def __init__(
        self, http: HttpGetter, api_url: str, admin_token: str | None, timeout_s: float = 5.0
    ) -> None:
        self.http = http
        self.base = api_url.rstrip("/") + "/admin/sessions/"
        self.headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.timeout_s = timeout_s

    async def page(self, session: SessionKeys, after_seq: int, limit: int) -> list[LogEntry]:
        query = urlencode({"project": session.project, "after_seq": after_seq, "limit": limit})
        url = f"{self.base}{quote(session.session_id, safe='')}/transcript?{query}"
        try:
            resp = await self.http.get(url, headers=self.headers, timeout=self.timeout_s)
        except (httpx.HTTPError, IngestHTTPError) as exc:
            raise TranscriptUnavailable(f"API unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise TranscriptUnavailable(f"API answered {resp.status_code}: {resp.text[:200]}")
        return [_entry(item) for item in resp.json()["items"]]


def _entry(item: dict[str, Any]) -> LogEntry:
    ts = datetime.fromisoformat(item["ts"])
    return LogEntry(
        int(item["seq"]),
        item["type"],
        item.get("data"),
        run_id=item["run_id"],
        token=int(item["token"]),
        ts_ms=(ts - _EPOCH) // _MS,
        id=item["id"],
    )
