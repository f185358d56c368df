"""Conversions shared by the routers: timestamps, log entries, owners, locks."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from streamward.api.problems import ProblemError
from streamward.api.schemas import LockOut, LogEntryOut, OwnerDetail
from streamward.core.timefmt import rfc3339
from streamward.core.timefmt import rfc3339_opt as rfc3339_opt  # re-exported for the routers
from streamward.lua.entries import Entry
from streamward.lua.keys import SessionKeys
from streamward.lua.leases import Ownership
from streamward.lua.streams import Streams

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def parse_rfc3339_ms(value: str, field: str = "ts") -> int:
    """Parse an RFC 3339 timestamp (offset required) to ms; 422 ``invalid_timestamp`` if not."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None or "T" not in value.upper():
        raise ProblemError(
            422,
            "invalid_timestamp",
            f"{field} must be an RFC 3339 timestamp with offset, got {value[:64]!r}",
        )
    return int(dt.timestamp() * 1000)


def entry_out(entry: Entry, session_id: str) -> LogEntryOut:
    return LogEntryOut(
        id=entry.id,
        seq=entry.seq,
        type=entry.type,
        run_id=entry.run_id,
        session_id=session_id,
        token=entry.token,
        data=entry.data,
        ts=rfc3339(entry.ts_ms or 0),
    )


async def read_transcript(
    streams: Streams,
    sk: SessionKeys,
    after: str,
    limit: int,
    record: AsyncEngine | None,
    retry_after_s: int,
) -> list[Entry]:
    """The first ``limit`` entries after the log id ``after``, oldest first: Redis's hot
    tail, and with the record configured the archive below it (same ids, order, cursors).
    One function for the client's transcript page and the runner's ``ctx.transcript()``."""
    entries = await streams.read_log(sk, after, count=limit)
    if record is None:
        return entries
    from streamward.api.record.reads import span  # the `db` extra: only when configured

    try:
        return await span(record, streams, sk, after, limit, entries)
    except Exception as exc:  # the database is down: Redis alone cannot answer this page
        raise ProblemError(
            503,
            "archive_unavailable",
            f"archive unreachable: {type(exc).__name__}",
            headers={"Retry-After": str(retry_after_s)},
        ) from exc


def entry_dict(entry: Entry, session_id: str) -> dict[str, object]:
    """The same shape as ``LogEntryOut`` without a model round trip (hot streaming path)."""
    return {
        "id": entry.id,
        "seq": entry.seq,
        "type": entry.type,
        "run_id": entry.run_id,
        "session_id": session_id,
        "token": entry.token,
        "data": entry.data,
        "ts": rfc3339(entry.ts_ms or 0),
    }


def owner_detail(own: Ownership) -> OwnerDetail | None:
    if not own.held or own.replica_id is None:
        return None
    return OwnerDetail(
        replica_id=own.replica_id,
        incarnation=own.incarnation or "",
        token=own.token or 0,
        acquired_at=rfc3339(own.acquired_ms or 0),
        renewed_at=rfc3339(own.renewed_ms or 0),
        expires_in_ms=own.expires_in_ms or 0,
    )


def lock_out(
    sk: SessionKeys, own: Ownership, transitions: int = 0, meta: dict[str, str] | None = None
) -> LockOut:
    """``meta``: the session meta, for its poison counters (docs/operations.md)."""
    state: Literal["held", "orphaned", "free"] = (
        "held" if own.alive else "orphaned" if own.held else "free"
    )
    return LockOut(
        session_id=sk.session_id,
        project=sk.project,
        holder=own.replica_id,
        incarnation=own.incarnation,
        token=own.token,
        epoch=own.epoch,
        transitions=transitions,
        acquired_at=rfc3339_opt(own.acquired_ms),
        renewed_at=rfc3339_opt(own.renewed_ms),
        expires_in_ms=own.expires_in_ms,
        state=state,
        poison_runs=int((meta or {}).get("poison_runs") or 0),
        last_poison_run_id=(meta or {}).get("last_poison_run_id") or None,
    )


U64_MAX = 2**64 - 1


def u64_ok(digits: str) -> bool:
    """A decimal string Redis takes as an unsigned 64-bit number (stream ids, SCAN cursors)."""
    return digits.isdigit() and int(digits) <= U64_MAX


def scan_cursor(value: str | None) -> int:
    """A page cursor (``next_cursor``); 422 ``invalid_cursor`` past what Redis can take."""
    if value is None:
        return 0
    if not u64_ok(value):
        raise ProblemError(422, "invalid_cursor", f"not a page cursor: {value[:64]!r}")
    return int(value)
