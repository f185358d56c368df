"""The session owner's inbox calls: peek (peekInbox), consume (completeInput), and both in
one (advanceInbox). A mixin of ``Scripts`` (lua/scripts.py), like redis-py's command
groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.inbox import InboxMeta, RawInboxEntry, parse_run_state
from streamward.lua.keys import SessionKeys
from streamward.lua.loader import ArgT, Script
from streamward.lua.replies import InboxPeek, as_int, as_list, as_str, pairs, status
from streamward.lua.replies import ok_reply as _ok


class InboxScripts:
    _by_name: dict[str, Script]
    _client: RedisClient

    async def peek_inbox(
        self,
        sk: SessionKeys,
        count: int,
        *,
        with_head: bool = True,
        token: int = 0,
        announce: Announce | None = None,
    ) -> InboxPeek:
        """``announce`` = (replica id, POISON_AFTER_OWNERS): the owner runs a runnable head
        at once, so the script publishes its start notice (includes/peekInbox.lua)."""
        keys = [sk.inbox, sk.runs, sk.cancels, sk.meta, sk.epoch]
        args = [count, 1 if with_head else 0, token, *announce_args(sk, announce)]
        raw = await self._by_name["peekInbox"](keys, args)
        return _inbox_peek(_ok("peekInbox", as_list(raw)))

    async def advance_inbox(
        self,
        sk: SessionKeys,
        token: int,
        entry_id: str,
        count: int,
        announce: Announce | None = None,
    ) -> InboxPeek:
        """completeInput then peekInbox (the new head in full, its take recorded under
        ``token``, ``announce`` as there) in one call; raises StaleToken (nothing consumed)."""
        keys = [sk.inbox, sk.runs, sk.cancels, sk.meta, sk.epoch]
        args = [token, entry_id, count, *announce_args(sk, announce)]
        r = as_list(await self._by_name["advanceInbox"](keys, args))
        if status(r) == E.STALE_TOKEN:
            raise E.StaleToken(token, as_int(r[1]))
        return _inbox_peek(_ok("advanceInbox", r))

    async def complete_input(self, session: SessionKeys, token: int, entry_id: str) -> int:
        """Pending count after the fenced XDEL; raises StaleToken."""
        raw = await self._by_name["completeInput"](
            [session.epoch, session.inbox, session.meta], [token, entry_id]
        )
        r = as_list(raw)
        if status(r) == E.STALE_TOKEN:
            raise E.StaleToken(token, as_int(r[1]))
        return as_int(_ok("completeInput", r)[1])


# (replica id, POISON_AFTER_OWNERS) of an owner that runs a runnable head at once
Announce = tuple[str, int]


def announce_args(sk: SessionKeys, announce: Announce | None) -> list[ArgT]:
    if announce is None:
        return ["0", 0, "", ""]
    replica_id, poison_after = announce
    return ["1", poison_after, sk.ref, replica_id]


def peek_from_wire(wire: Sequence[Any]) -> InboxPeek:
    """``ingestAdvance``'s peek as the API passes it on (``IngestResult.peek``)."""
    return _inbox_peek([1, *wire])


def _inbox_peek(r: Sequence[Any]) -> InboxPeek:
    """A peekInbox / advanceInbox reply (past its status)."""
    flat = [as_str(x) for x in as_list(r[1])]
    metas = [InboxMeta(*flat[i : i + 3]) for i in range(0, len(flat), 3)]
    if not metas:
        return InboxPeek([], None, None, False)
    head = RawInboxEntry(metas[0].id, pairs(as_list(r[2]))) if as_list(r[2]) else None
    state_json = as_str(r[3])
    state = parse_run_state(metas[0].run_id, state_json) if state_json else None
    announced = len(r) > 6 and as_int(r[6]) == 1
    return InboxPeek(metas, head, state, as_int(r[4]) == 1, as_int(r[5]), announced)
