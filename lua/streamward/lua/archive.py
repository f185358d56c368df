"""Redis calls of the archiver (api/record): its work set, claims, reads and the log trim.

The work set ``sw:archive:dirty`` maps a session ref to the ms it is due for a pass. It is
fed from the session index (``sw:sessions``, scored by last activity on every invoke), so
the hot paths write nothing new. Several archivers share it: each session pass is claimed
with ``SET NX PX`` (a crashed archiver's claim expires and the session is due again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.keys import SessionKeys


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A log entry as the archiver copies it: ``data`` is the JSON text Redis holds, passed
    to PostgreSQL as it is (never decoded and encoded again)."""

    seq: int
    type: str
    run_id: str
    token: int
    ts_ms: int
    data: str


def raw_entry(fields: dict[Any, Any]) -> RawEntry:
    return RawEntry(
        int(fields["seq"]),
        _s(fields["type"]),
        _s(fields.get("run_id", "")),
        int(fields.get("token") or 0),
        int(fields.get("ts") or 0),
        _s(fields.get("data") or "null"),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one archive pass reads of a session, in one round trip."""

    meta: dict[str, str]
    runs: dict[str, str]
    history: list[tuple[str, dict[str, str]]]
    entries: list[RawEntry]  # the first batch after the archived position
    busy: bool  # owned, or input waiting (``busy``), read in the same round trip


class ArchiveCalls(StreamsBase):
    """The archiver's Redis side."""

    async def feed(self, now_ms: int, overlap_ms: int, delay_ms: int = 0) -> int:
        """Mark every session active since the last feed as due ``delay_ms`` from now (a busy
        session's writes are archived in one pass per delay, not one per feed); returns how
        many.

        ``ZADD LT``: a session already due stays due as early as it was, and one claimed
        (scored in the future) becomes due again, so its claimer sees the change.
        Re-reading ``overlap_ms`` before the watermark covers index writes scored with a
        clock slightly behind (a mark twice costs one idempotent pass).
        """
        since = int(await self.client.get(self.keys.archive_fed) or 0)
        refs = await self.client.zrangebyscore(
            self.keys.sessions, max(0, since - overlap_ms), "+inf"
        )
        if refs:
            due = now_ms + delay_ms
            await self.client.zadd(self.keys.archive_dirty, {_s(r): due for r in refs}, lt=True)
        # a watermark that only grows: concurrent feeders at worst feed twice
        await self.client.set(self.keys.archive_fed, now_ms)
        return len(refs)

    async def mark(self, ref: str, due_ms: int) -> None:
        """Due at ``due_ms`` at the latest (an earlier due time is kept)."""
        await self.client.zadd(self.keys.archive_dirty, {ref: due_ms}, lt=True)

    async def due(self, now_ms: int, count: int) -> list[tuple[str, int]]:
        items = await self.client.zrangebyscore(
            self.keys.archive_dirty, "-inf", now_ms, start=0, num=count, withscores=True
        )
        return [(_s(r), int(score)) for r, score in items]

    async def oldest_due_ms(self, now_ms: int) -> int | None:
        """The due time of the longest-waiting session (None: nothing is due)."""
        items = await self.client.zrangebyscore(
            self.keys.archive_dirty, "-inf", now_ms, start=0, num=1, withscores=True
        )
        return int(items[0][1]) if items else None

    async def backlog(self) -> int:
        return int(await self.client.zcard(self.keys.archive_dirty))

    async def claim(self, ref: str, owner: str, claim_ms: int, now_ms: int) -> bool:
        """Take one session's pass; it is re-scored to come due again if we die holding it."""
        if not await self.client.set(self.keys.archive_claim(ref), owner, nx=True, px=claim_ms):
            return False
        await self.client.zadd(self.keys.archive_dirty, {ref: now_ms + claim_ms}, xx=True)
        return True

    async def unclaim(self, ref: str) -> None:
        """Drop the claim after a pass. Unchecked (one round trip, not two): a pass outliving
        its claim could only free another archiver's, and two passes at once are harmless
        (every write is idempotent), merely wasted."""
        await self.client.delete(self.keys.archive_claim(ref))

    async def revisit(self, ref: str, due_ms: int, *, unclaim: bool = False) -> None:
        """Due again at ``due_ms``; ``unclaim``: and the claim dropped, in the same round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.archive_dirty, {ref: due_ms})
        if unclaim:
            pipe.delete(self.keys.archive_claim(ref))
        await pipe.execute()

    async def settle(self, ref: str) -> None:
        await self.client.zrem(self.keys.archive_dirty, ref)

    async def snapshot(
        self, session: SessionKeys, history_after: str, log_after_seq: int, count: int
    ) -> Snapshot:
        """Meta, the runs hash, the ownership history after ``history_after``, the first
        ``count`` log entries after ``log_after_seq`` and whether the session is busy: one
        pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(session.meta)
        pipe.hgetall(session.runs)
        pipe.xrange(session.history, min=f"({history_after}")
        pipe.xrange(session.log, min=f"({log_after_seq}-0", count=count)
        pipe.exists(session.lease)
        pipe.xlen(session.inbox)
        meta, runs, history, log, held, pending = await pipe.execute()
        return Snapshot(
            {_s(k): _s(v) for k, v in meta.items()},
            {_s(k): _s(v) for k, v in runs.items()},
            [(_s(i), {_s(k): _s(v) for k, v in f.items()}) for i, f in history],
            [raw_entry(f) for _, f in log],
            bool(held) or int(pending) > 0,
        )

    async def read_log_raw(
        self, session: SessionKeys, after_seq: int, count: int
    ) -> list[RawEntry]:
        """The first ``count`` log entries after ``after_seq``, their data left as text."""
        log: Any = await self.client.xrange(session.log, min=f"({after_seq}-0", count=count)
        return [raw_entry(f) for _, f in log]

    async def first_seq(self, session: SessionKeys) -> int | None:
        """The seq of the oldest entry still in the Redis log (None: the log is empty)."""
        head: Any = await self.client.xrange(session.log, count=1)
        return int(_s(head[0][0]).split("-", 1)[0]) if head else None

    async def trim_log(self, session: SessionKeys, below_seq: int) -> int:
        """Drop the log's entries with seq < ``below_seq`` (only ever below the archived)."""
        return int(await self.client.xtrim(session.log, minid=f"{below_seq}-0", approximate=False))

    async def claim_retention(self, owner: str, ttl_ms: int) -> bool:
        """The retention pass for the next ``ttl_ms``: one archiver runs it, the lock simply
        expires (no release: the next pass is due after the interval anyway)."""
        return bool(await self.client.set(self.keys.archive_retention, owner, nx=True, px=ttl_ms))
