"""Typed async calls for streamward's streams and indexes: work queue, mailboxes, inbox, log.

Like lua/store.py, this is the only way api/ and runner/ touch these keys. Every call is
single-key or stays inside one session's hash tag (Cluster-safe). ``Streams`` gathers the
call groups of lua/work.py, lua/inbox.py and lua/indexes.py; the log reads live here.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamward.lua import autopipe
from streamward.lua.entries import TERMINAL_TYPES as TERMINAL_TYPES  # re-exported
from streamward.lua.entries import Entry
from streamward.lua.inbox import SessionState
from streamward.lua.indexes import Indexes
from streamward.lua.keys import SessionKeys
from streamward.lua.listing import SessionListing
from streamward.lua.work import WorkQueue

# a stored transcript entry: the one entry type (lua/entries.py), under its old name
LogEntry = Entry
# the greatest stream entry id (both parts are unsigned 64-bit numbers)
LAST_STREAM_ID = f"{2**64 - 1}-{2**64 - 1}"


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def parse_log_entry(entry_id: str, fields: dict[str, str]) -> LogEntry:
    return Entry(
        int(fields["seq"]),
        fields["type"],
        orjson.loads(fields.get("data") or "null"),
        run_id=fields.get("run_id", ""),
        token=int(fields.get("token", "0")),
        ts_ms=int(fields.get("ts") or 0),
        id=_s(entry_id),
    )


class Streams(WorkQueue, SessionState, Indexes, SessionListing):
    """Work queue, mailboxes, inbox, log, meta, attachments and indexes."""

    # -- log -----------------------------------------------------------------------------------

    async def log_last_id(self, session: SessionKeys) -> str:
        tail = await self.client.xrevrange(session.log, count=1)
        return _s(tail[0][0]) if tail else "0-0"

    async def last_seq(self, session: SessionKeys) -> int:
        return int(self.log_last_id_seq(await self.log_last_id(session)))

    async def last_seq_and_meta(self, session: SessionKeys) -> tuple[int, dict[str, str]]:
        """``last_seq`` and the session's meta hash in one round trip (an owner opening)."""

        def build(pipe: Any) -> None:
            pipe.xrevrange(session.log, count=1)
            pipe.hgetall(session.meta)

        tail, meta = await autopipe.execute(self.client, build)
        last_id = _s(tail[0][0]) if tail else "0-0"
        return self.log_last_id_seq(last_id), {_s(k): _s(v) for k, v in dict(meta).items()}

    @staticmethod
    def log_last_id_seq(entry_id: str) -> int:
        return int(entry_id.split("-", 1)[0])

    async def read_log(
        self, session: SessionKeys, after: str = "0-0", count: int = 100
    ) -> list[LogEntry]:
        """Entries strictly after ``after``, oldest first."""
        if after == LAST_STREAM_ID:  # nothing can follow it (Redis refuses the exclusive range)
            return []
        items = await self.client.xrange(session.log, min=f"({after}", count=count)
        return [parse_log_entry(i, f) for i, f in items]

    async def taken_run_id(self, session: SessionKeys, head_taken: str) -> str | None:
        """The run of the input an owner took (meta ``head_taken``: ``<inbox entry id>|<token>|
        <owners>``, recorded by ``peekInbox``) while that input is not consumed, else None."""
        entry_id = head_taken.split("|", 1)[0]
        if not entry_id:
            return None
        items = await self.client.xrange(session.inbox, min=entry_id, max=entry_id, count=1)
        if not items:
            return None
        fields = {_s(k): _s(v) for k, v in dict(items[0][1]).items()}
        return fields.get("run_id") or None

    async def read_log_tail(self, session: SessionKeys, count: int) -> list[LogEntry]:
        items = await self.client.xrevrange(session.log, count=count)
        return [parse_log_entry(i, f) for i, f in reversed(items)]

    async def wait_log(
        self, session: SessionKeys, after: str, block_ms: int, count: int = 100
    ) -> list[LogEntry]:
        """Block up to ``block_ms`` for entries after ``after`` (XREAD BLOCK)."""
        reply = await self.client.xread({session.log: after}, count=count, block=block_ms)
        return [parse_log_entry(i, f) for _, items in reply or [] for i, f in items]
