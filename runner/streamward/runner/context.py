"""RunContext: what a handler knows about the run it serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from streamward.lua.keys import SessionKeys
from streamward.lua.streams import LogEntry, Streams

# The handler contract: ``async def handler(ctx, input)`` yielding JSON-serialisable outputs.
Handler = Callable[["RunContext", Any], AsyncIterator[Any]]


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

    @property
    def is_cancelled(self) -> bool:
        """True once cancellation was requested (the handler also gets CancelledError)."""
        return self.cancelled.is_set()

    async def transcript(self, after_seq: int = 0, limit: int = 1000) -> list[LogEntry]:
        """Earlier transcript entries with ``after_seq < seq < started_seq``, oldest first."""
        out: list[LogEntry] = []
        async for entry in self.history(after_seq):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    async def history(self, after_seq: int = 0, page: int = 200) -> AsyncIterator[LogEntry]:
        """Iterate the session's transcript from ``after_seq`` up to (not incl.) this run."""
        after = f"{after_seq}-0"
        while True:
            entries = await self.streams.read_log(self.session, after=after, count=page)
            for e in entries:
                if e.seq >= self.started_seq:
                    return
                yield e
            if len(entries) < page:
                return
            after = entries[-1].id
