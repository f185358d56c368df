"""RunContext: what a handler knows about the run it serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamward.lua.keys import SessionKeys
from streamward.lua.streams import LogEntry, Streams
from streamward.runner.archive_reads import ArchiveReads

# The handler contract: ``async def handler(ctx, input)`` yielding JSON-serialisable outputs.
Handler = Callable[["RunContext", Any], AsyncIterator[Any]]


class SessionLost(RuntimeError):
    """This activation may no longer write: the lease was taken over, the replica fenced
    itself, or the session was deleted. Local clean-up may (and should) still run."""


class StateTooLarge(ValueError):
    """``save_state``: the snapshot serialises larger than ``STREAMWARD_STATE_MAX_BYTES``."""


class SessionLink(Protocol):
    """What a run reaches of its session's activation (``lifecycle.Activation``)."""

    @property
    def can_write(self) -> bool: ...
    @property
    def archive(self) -> ArchiveReads | None: ...
    async def save_state(self, obj: Any) -> None: ...
    def pending_inputs(self, run_id: str) -> AsyncIterator[Any]: ...


async def read_history(
    streams: Streams,
    session: SessionKeys,
    after_seq: int,
    page: int,
    below_seq: int | None,
    archive: ArchiveReads | None = None,
) -> AsyncIterator[LogEntry]:
    """The session log from ``after_seq`` (exclusive), oldest first, up to ``below_seq``:
    Redis's hot tail, and through ``archive`` what the hot-tail trim removed below it."""
    after = after_seq
    while below_seq is None or after + 1 < below_seq:
        entries = await streams.read_log(session, after=f"{after}-0", count=page)
        if archive is not None and await _trimmed(streams, session, after, entries):
            entries = await archive.page(session, after, page)  # the API spans both
        for e in entries:
            if below_seq is not None and e.seq >= below_seq:
                return
            yield e
        if len(entries) < page:
            return
        after = entries[-1].seq


async def _trimmed(
    streams: Streams, session: SessionKeys, after_seq: int, entries: list[LogEntry]
) -> bool:
    """Whether Redis lacks entries right after ``after_seq`` (the API's rule, record/reads):
    its page does not start at the next seq, or it is empty short of the log's end."""
    if entries:
        return entries[0].seq != after_seq + 1
    return after_seq < await streams.last_seq(session)


@dataclass
class RunContext:
    """Identity of one run attempt, its cancellation signal and the earlier transcript."""

    session_id: str
    project: str
    run_id: str
    token: int
    attempt: int
    replica_id: str
    started_seq: int  # seq of this attempt's run.started; the earlier transcript is below it
    session: SessionKeys = field(repr=False)
    streams: Streams = field(repr=False)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    link: SessionLink | None = field(default=None, repr=False)  # set by the runner

    @property
    def is_cancelled(self) -> bool:
        """True once cancellation was requested (the handler also gets CancelledError)."""
        return self.cancelled.is_set()

    @property
    def can_write(self) -> bool:
        """False once this activation lost the session (``save_state`` raises SessionLost)."""
        return self.link is not None and self.link.can_write

    async def save_state(self, obj: Any) -> None:
        """Store ``obj`` (JSON) as the session's snapshot: fenced, atomic, one round trip."""
        await self._link().save_state(obj)

    def pending_inputs(self) -> AsyncIterator[Any]:
        """The inputs queued behind this run right now, oldest first; each one taken ends
        with its own ``run.merged`` entry naming this run (docs/runner.md)."""
        return self._link().pending_inputs(self.run_id)

    def _link(self) -> SessionLink:
        if self.link is None:
            raise RuntimeError("this RunContext is not attached to a session activation")
        return self.link

    async def transcript(self, after_seq: int = 0, limit: int = 1000) -> list[LogEntry]:
        """Earlier transcript entries with ``after_seq < seq < started_seq``, oldest first."""
        out: list[LogEntry] = []
        async for entry in self.history(after_seq):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def history(self, after_seq: int = 0, page: int = 200) -> AsyncIterator[LogEntry]:
        """Iterate the session's transcript from ``after_seq`` up to (not incl.) this run."""
        # below Redis's hot tail (the record on): the activation's reader of the API's page
        archive = self.link.archive if self.link is not None else None
        return read_history(self.streams, self.session, after_seq, page, self.started_seq, archive)
