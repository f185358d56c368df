"""The archiver: copies each session's Redis log and lifecycle (meta, runs, ownership
history) to PostgreSQL, then trims the Redis log below what is archived, keeping a hot tail.

Loses nothing, by construction:
- every write is an idempotent upsert keyed by (project, session, seq) / run / history id,
  and ``sessions.archived_seq`` advances in the same transaction as the entries it covers,
  so a kill -9 mid-batch leaves neither duplicates nor gaps;
- Redis trims only below ``archived_seq`` as read back from what was committed;
- while PostgreSQL is down nothing is trimmed and the work set keeps every session due:
  the archiver catches up when the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.record import db, writes
from streamward.lua.archive import ArchiveCalls, RawEntry
from streamward.lua.keys import SessionKeys
from streamward.lua.streams import Streams

log = logging.getLogger("streamward.archiver")
# sessions active this long before the last feed are fed again (clock skew between hosts)
FEED_OVERLAP_MS = 5_000
# sessions whose last pass this archiver remembers
SEEN_MAX = 100_000
# what a database outage raises (asyncpg's errors arrive wrapped in DBAPIError)
DB_DOWN: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, OSError, TimeoutError)


@dataclass(frozen=True)
class ArchiveSettings:
    interval_s: float = 0.5
    revisit_s: float = 2.0
    # activity makes a session due this long after it is seen (batches a busy session)
    batch_delay_s: float = 1.0
    batch_entries: int = 500
    sessions_per_pass: int = 100
    claim_s: float = 30.0
    # at least 1: ingestEntries reads the last seq from the log's last entry, so the log is
    # never trimmed empty
    hot_tail_entries: int = 1000

    def __post_init__(self) -> None:
        if self.hot_tail_entries < 1:
            raise ValueError("hot_tail_entries must be at least 1 (the log's last entry stays)")

    # and every entry younger than this stays too (0: the count alone decides)
    hot_tail_s: float = 0.0


@dataclass
class ArchiveStats:
    """What the archiver did (its metrics read these)."""

    entries: int = 0
    sessions: int = 0
    trimmed: int = 0
    db_errors: int = 0
    lag_s: float = 0.0
    backlog: int = 0
    db_up: bool = True
    last_error: str = ""
    passes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Seen:
    """What this archiver last wrote for one session."""

    at: db.ArchivedSession
    meta_fp: int
    run_fps: dict[str, int]
    trimmed_below: int


class Archiver:
    """One archiver; any number may run against the same Redis and database."""

    def __init__(
        self,
        streams: Streams,
        calls: ArchiveCalls,
        engine: AsyncEngine,
        settings: ArchiveSettings | None = None,
        owner: str | None = None,
    ) -> None:
        self.streams = streams
        self.calls = calls
        self.engine = engine
        self.settings = settings or ArchiveSettings()
        self.owner = owner or f"archiver-{uuid.uuid4().hex[:12]}"
        self.stats = ArchiveStats()
        # ref -> (how far it is archived, fingerprint of meta + runs) as this archiver last
        # wrote them: a revisit of an unchanged session costs Redis reads and no database
        # round trip. Another archiver may have gone further: a stale entry only re-reads
        # entries already archived (the writes are idempotent, the position only grows).
        self._seen: dict[str, Seen] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; Redis or database outages are waited out."""
        while not stop.is_set():
            busy = False
            try:
                busy = await self.tick() > 0
            except RedisError as exc:
                log.warning("archiver: redis unavailable: %s", exc)
            except DB_DOWN as exc:
                self._db_down(exc)
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.interval_s)

    def _db_down(self, exc: BaseException) -> None:
        self.stats.db_errors += 1
        self.stats.db_up = False
        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("archiver: database unavailable, Redis keeps everything: %s", exc)

    async def tick(self) -> int:
        """Feed the work set, then archive the due sessions this archiver can claim."""
        s = self.settings
        now = await self.calls.now_ms()
        await self.calls.feed(now, FEED_OVERLAP_MS, int(s.batch_delay_s * 1000))
        oldest = await self.calls.oldest_due_ms(now)
        self.stats.lag_s = 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)
        self.stats.backlog = await self.calls.backlog()
        done = 0
        claim_ms = int(s.claim_s * 1000)
        for ref, _ in await self.calls.due(now, s.sessions_per_pass):
            if not await self.calls.claim(ref, self.owner, claim_ms, now):
                continue
            unclaimed = False
            try:
                unclaimed = await self.archive(ref, now)
                done += 1
            except DB_DOWN as exc:
                # due again soon (not at once: a dead database is not hammered)
                await self.calls.revisit(ref, now + int(s.revisit_s * 1000), unclaim=True)
                unclaimed = True
                self._db_down(exc)
                break
            finally:
                if not unclaimed:
                    await self.calls.unclaim(ref)
        if done:
            self.stats.db_up = True
        return done

    async def archive(self, ref: str, now_ms: int | None = None) -> bool:
        """One session's pass; then revisit it while it is busy, else let it go. ``now_ms``:
        the tick's Redis time (a revisit is due that long after it). True when the claim
        was dropped here (with the revisit, in its round trip)."""
        sk = self.streams.keys.session_ref(ref)
        _, busy = await self.archive_once(sk)
        revisit_ms = int(self.settings.revisit_s * 1000)
        if busy:
            now = now_ms if now_ms is not None else await self.calls.now_ms()
            await self.calls.revisit(ref, now + revisit_ms, unclaim=True)
            return True
        # idle: leave the work set, then look once more. Writes before the ZREM are seen by
        # this second pass; an invoke after it feeds the session again.
        await self.calls.settle(ref)
        new, busy = await self.archive_once(sk)
        if new or busy:
            await self.calls.mark(ref, await self.calls.now_ms())
        return False

    async def archive_once(self, sk: SessionKeys) -> tuple[bool, bool]:
        """Copy what is new since the last pass: (anything new written, the session busy:
        owned or input waiting, as read with the pass's snapshot)."""
        seen = self._seen.get(sk.ref)
        if seen is None:
            async with self.engine.connect() as conn:
                at = await db.archived(conn, sk.project, sk.session_id)
        else:
            at = seen.at
        batch = self.settings.batch_entries
        snap = await self.calls.snapshot(sk, at.archived_history_id, at.archived_seq, batch)
        meta, runs_raw, history, entries = snap.meta, snap.runs, snap.history, snap.entries
        if not meta and at.archived_seq == 0:
            return False, snap.busy  # gone (or never written): nothing to record
        meta_fp = hash(frozenset(meta.items()))
        run_fps = {run_id: hash(raw) for run_id, raw in runs_raw.items()}
        last_seq = int(meta.get("last_seq") or 0)
        if (
            seen is not None
            and seen.meta_fp == meta_fp
            and not history
            and (last_seq <= at.archived_seq and seen.run_fps == run_fps)
        ):
            return False, snap.busy  # nothing changed since this archiver's last pass
        # only the runs that changed since this archiver wrote them (a session has many)
        known = seen.run_fps if seen is not None else {}
        runs = {
            run_id: _run_state(raw)
            for run_id, raw in runs_raw.items()
            if known.get(run_id) != run_fps[run_id]
        }
        seq = at.archived_seq
        history_id = history[-1][0] if history else at.archived_history_id
        new = bool(history)
        first = True
        while True:
            if not first:
                entries = await self.calls.read_log_raw(sk, seq, batch)
            if entries and entries[0].seq != seq + 1:
                # the log lost entries we never archived (Redis flushed or restored): record
                # what exists, and say so
                log.error(
                    "archiver: %s log starts at seq %d, archived up to %d: entries lost in Redis",
                    sk.ref, entries[0].seq, seq,
                )  # fmt: skip
            if entries:
                seq = entries[-1].seq
            await self._write(sk, meta, runs if first else {}, history if first else [], entries,
                              seq, history_id)  # fmt: skip
            first = False
            self.stats.entries += len(entries)
            new = new or bool(entries)
            if len(entries) < batch:
                break
        self.stats.sessions += 1
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()  # bounded memory; the next passes read the position again
        trimmed = await self._trim(sk, seq, max(last_seq, seq), seen.trimmed_below if seen else 0)
        self._seen[sk.ref] = Seen(db.ArchivedSession(seq, history_id), meta_fp, run_fps, trimmed)
        return new, snap.busy

    async def _write(
        self,
        sk: SessionKeys,
        meta: dict[str, str],
        runs: dict[str, dict[str, Any]],
        history: list[tuple[str, dict[str, str]]],
        entries: list[RawEntry],
        archived_seq: int,
        history_id: str,
    ) -> None:
        """One statement (record/writes.py): the entries and the position that covers them
        commit together."""
        args = writes.pass_args(
            sk.project, sk.session_id, entries=entries, runs=runs, history=history, meta=meta,
            archived_seq=archived_seq, archived_history_id=history_id,
            last_activity_ms=int(meta.get("updated_ms") or 0), now_ms=int(time.time() * 1000),
        )  # fmt: skip
        # on the archiver's autocommit engine begin() sends nothing: the statement is atomic
        async with self.engine.begin() as conn:
            await writes.write_pass(conn, args)

    async def _trim(
        self, sk: SessionKeys, archived_seq: int, last_seq: int, trimmed_below: int
    ) -> int:
        """Keep the hot tail and everything not yet archived; drop the rest from Redis.
        Returns the seq the log now starts at or after (``trimmed_below`` when unchanged)."""
        keep_from = min(archived_seq + 1, last_seq - self.settings.hot_tail_entries + 1)
        if keep_from <= trimmed_below:
            return trimmed_below  # trimmed that far already (by this archiver)
        first = await self.calls.first_seq(sk)
        if first is None or keep_from <= first:
            return max(trimmed_below, first or 0)
        if self.settings.hot_tail_s > 0:
            cutoff_ms = await self.calls.now_ms() - int(self.settings.hot_tail_s * 1000)
            keep_from = await self._first_since(sk, cutoff_ms, first, keep_from)
        if keep_from > first:
            self.stats.trimmed += await self.calls.trim_log(sk, keep_from)
        return keep_from

    async def _first_since(self, sk: SessionKeys, cutoff_ms: int, lo: int, hi: int) -> int:
        """The first seq in [lo, hi] written at or after ``cutoff_ms`` (``hi`` if none before
        it is): a binary search over the log (entry times grow with seq), log2(n) reads."""
        while lo < hi:
            mid = (lo + hi) // 2
            got = await self.streams.read_log(sk, f"{mid - 1}-0", count=1)
            if not got or got[0].seq > hi:
                return hi
            if (got[0].ts_ms or 0) >= cutoff_ms:
                hi = got[0].seq if got[0].seq < hi else mid
            else:
                lo = got[0].seq + 1
        return lo


def _run_state(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"status": "unknown"}
    return value if isinstance(value, dict) else {"status": "unknown"}
