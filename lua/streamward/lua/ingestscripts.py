"""The transcript's script calls (ingestEntries, ingestAdvance): one session's batch, or
several sessions' batches in one pipelined round trip, each optionally consuming its run's
input after the append. A mixin of ``Scripts`` (lua/scripts.py), like redis-py's command
groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.entries import Entry
from streamward.lua.inboxscripts import Announce, announce_args
from streamward.lua.keys import SessionKeys
from streamward.lua.loader import ArgT, Script, execute_pipeline
from streamward.lua.replies import IngestResult, as_int, as_list, as_str, status
from streamward.lua.replies import ok_reply as _ok

# one ingest_entries call: session, token, run_id, owner ("" = no check), entries
IngestCall = tuple[SessionKeys, int, str, str, Sequence[Entry]]
# what an ingest also consumes (ingestAdvance-7): inbox entry id, inputs to peek, announce
Advance = tuple[str, int, Announce | None]


def _ingest_call(
    session: SessionKeys,
    token: int,
    run_id: str,
    owner: str,
    entries: Sequence[Entry],
    advance: list[ArgT] | None = None,
) -> tuple[list[str], list[ArgT]]:
    args: list[ArgT] = [token, run_id, len(entries), owner, *(advance or ())]
    for e in entries:
        # the data as JSON text (an orjson.Fragment's JSON passes through as is)
        args += [e.seq, e.type, orjson.dumps(e.data), "" if e.ts_ms is None else e.ts_ms]
    return [session.epoch, session.log, session.meta, session.runs, session.lease], args


def _advance_call(call: IngestCall, advance: Advance) -> tuple[list[str], list[ArgT]]:
    session = call[0]
    entry_id, count, announce = advance
    _, args = _ingest_call(*call, [entry_id, count, *announce_args(session, announce)])
    keys = [session.inbox, session.runs, session.cancels, session.meta, session.epoch]
    return [*keys, session.log, session.lease], args


def _ingest_reply(token: int, raw: object) -> IngestResult:
    r = as_list(raw)
    if status(r) == E.STALE_TOKEN:
        raise E.StaleToken(token, as_int(r[1]))
    _ok("ingestEntries", r)
    return IngestResult(as_int(r[1]), as_int(r[2]), as_int(r[3]))


def _advance_reply(token: int, raw: object) -> IngestResult:
    res = _ingest_reply(token, raw)
    r = as_list(raw)
    wire: list[Any] = [
        [as_str(x) for x in as_list(r[4])],
        [as_str(x) for x in as_list(r[5])],
        as_str(r[6]),
        as_int(r[7]),
        as_int(r[8]),
        as_int(r[9]),
    ]
    return IngestResult(res.accepted, res.duplicates, res.last_seq, wire)


class IngestScripts:
    _by_name: dict[str, Script]
    _client: RedisClient

    async def ingest_entries(
        self,
        session: SessionKeys,
        token: int,
        run_id: str,
        owner: str,
        entries: Sequence[Entry],
    ) -> IngestResult:
        """Raises StaleToken, NotOwner or SeqGap (nothing written then)."""
        keys, args = _ingest_call(session, token, run_id, owner, entries)
        raw = await self._by_name["ingestEntries"](keys, args)
        return _ingest_reply(token, raw)

    async def ingest_advance(self, call: IngestCall, advance: Advance) -> IngestResult:
        """``ingest_entries``, then (only if that succeeded) the run's input consumed and the
        next one peeked as ``advance_inbox`` would; raises as ``ingest_entries``."""
        keys, args = _advance_call(call, advance)
        raw = await self._by_name["ingestAdvance"](keys, args)
        return _advance_reply(call[1], raw)

    async def ingest_many(
        self,
        calls: Sequence[IngestCall],
        advances: Sequence[Advance | None] | None = None,
    ) -> list[IngestResult | E.StreamwardError]:
        """Several sessions' ``ingest_entries`` in one pipelined round trip (``advances[i]``:
        call ``i`` as ``ingest_advance``); each call's refusal (StaleToken, NotOwner, SeqGap)
        is returned in its place, not raised: one stale owner must not fail the others'."""
        plain, combined = self._by_name["ingestEntries"], self._by_name["ingestAdvance"]
        todo = advances if advances is not None else [None] * len(calls)
        built = [
            (plain, *_ingest_call(*c)) if a is None else (combined, *_advance_call(c, a))
            for c, a in zip(calls, todo, strict=True)
        ]

        def build(pipe: Pipeline) -> None:
            for script, keys, args in built:
                script.queue(pipe, keys, args)

        used = [combined, plain] if any(a is not None for a in todo) else [plain]
        replies = await execute_pipeline(self._client, used, build, alone=True)
        out: list[IngestResult | E.StreamwardError] = []
        for call, a, raw in zip(calls, todo, replies, strict=True):
            try:
                reply = _ingest_reply if a is None else _advance_reply
                out.append(reply(call[1], raw))
            except E.StreamwardError as exc:
                out.append(exc)
        return out
