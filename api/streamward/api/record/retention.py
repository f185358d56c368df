"""Retention in the record: per-project ages, enforced by bounded deletes.

Each delete statement removes at most ``batch_rows`` rows (chosen by ctid through the
``(project, ts_ms)`` / ``(project, updated_ms)`` indexes), so a pass never holds long locks
or a long transaction; a pass stops after ``max_batches`` statements and the next one goes
on. One archiver at a time runs it (a Redis lock, ``sw:archive:retention``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record.tables import ownership_events, runs, sessions, transcript_entries

DAY_MS = 86_400_000


@dataclass(frozen=True)
class RetentionPolicy:
    default_days: int = 30
    # project -> days, overriding the default
    by_project: Mapping[str, int] | None = None
    batch_rows: int = 5000
    max_batches: int = 200


def _rules(policy: RetentionPolicy, now_ms: int) -> list[tuple[sa.ColumnElement[bool], int]]:
    """(which projects, cutoff ms) per rule: each override, then the default for the rest."""
    by = dict(policy.by_project or {})
    rules: list[tuple[sa.ColumnElement[bool], int]] = []
    for project, days in by.items():
        rules.append((sa.literal_column("project") == project, now_ms - days * DAY_MS))
    rest = sa.literal_column("project").not_in(list(by)) if by else sa.true()
    rules.append((rest, now_ms - policy.default_days * DAY_MS))
    return rules


async def _bounded_delete(
    engine: AsyncEngine, table: sa.Table, where: sa.ColumnElement[bool], batch: int
) -> int:
    ctid: sa.ColumnClause[Any] = sa.literal_column("ctid")
    pick = sa.select(ctid).select_from(table).where(where).limit(batch).scalar_subquery()
    async with engine.begin() as conn:
        result = await conn.execute(sa.delete(table).where(ctid.in_(pick)))
    return int(result.rowcount or 0)


async def enforce(engine: AsyncEngine, policy: RetentionPolicy, now_ms: int) -> int:
    """One retention pass; returns rows deleted. Entries go by their own age, sessions (with
    their runs and ownership events) once their last update is older than the cutoff."""
    deleted = 0
    budget = policy.max_batches
    for projects, cutoff in _rules(policy, now_ms):
        old_session = sa.and_(projects, sessions.c.updated_ms < cutoff)
        targets: list[tuple[sa.Table, sa.ColumnElement[bool]]] = [
            (transcript_entries, sa.and_(projects, transcript_entries.c.ts_ms < cutoff)),
            (ownership_events, sa.and_(projects, ownership_events.c.at_ms < cutoff)),
            (runs, sa.and_(projects, runs.c.updated_ms < cutoff)),
            (sessions, old_session),
        ]
        for table, where in targets:
            while budget > 0:
                budget -= 1
                n = await _bounded_delete(engine, table, where, policy.batch_rows)
                deleted += n
                if n < policy.batch_rows:
                    break
    return deleted
