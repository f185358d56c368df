"""Shared helpers of the record tests: a session with a transcript in a real Redis."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record.tables import transcript_entries
from streamward.lua.keys import SessionKeys
from streamward.lua.store import Entry, LeaseStore


async def write_log(
    store: LeaseStore, sk: SessionKeys, first: int, count: int, *, release: bool = True
) -> None:
    """Ingest entries ``first .. first+count-1`` as one owner (then release the lease)."""
    lease = await store.acquire(sk, "r1", "i1", 60_000)
    for start in range(first, first + count, 500):
        batch = [
            Entry(seq=s, type="run.output", data={"n": s, "z": [1, 2.5], "a": "x"}, run_id="run_1")
            for s in range(start, min(start + 500, first + count))
        ]
        await store.ingest(sk, "run_1", lease.token, batch)
    if release:
        await store.release(sk, "r1", "i1", lease.token)


async def archived_seqs(engine: AsyncEngine, sk: SessionKeys) -> list[int]:
    t = transcript_entries
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.seq)
            .where(t.c.project == sk.project, t.c.session_id == sk.session_id)
            .order_by(t.c.seq)
        )
        return [r[0] for r in rows]
