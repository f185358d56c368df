"""The transcript's script calls (ingestEntries): one session's batch, or several sessions'
batches in one pipelined round trip. A mixin of ``Scripts`` (lua/scripts.py), like redis-py's
command groups."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from redis.asyncio.client import Pipeline

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.entries import Entry
from streamward.lua.keys import SessionKeys
from streamward.lua.loader import ArgT, Script, execute_pipeline
from streamward.lua.replies import IngestResult, as_int, as_list, status
from streamward.lua.replies import ok_reply as _ok

# one ingest_entries call: session, token, run_id, owner ("" = no check), entries
IngestCall = tuple[SessionKeys, int, str, str, Sequence[Entry]]


def _ingest_call(
    session: SessionKeys, token: int, run_id: str, owner: str, entries: Sequence[Entry]
) -> tuple[list[str], list[ArgT]]:
    args: list[ArgT] = [token, run_id, len(entries), owner]
    for e in entries:
        # the data as JSON text (an orjson.Fragment's JSON passes through as is)
        args += [e.seq, e.type, orjson.dumps(e.data), "" if e.ts_ms is None else e.ts_ms]
    return [session.epoch, session.log, session.meta, session.runs, session.lease], args


def _ingest_reply(token: int, raw: object) -> IngestResult:
    r = as_list(raw)
    if status(r) == E.STALE_TOKEN:
        raise E.StaleToken(token, as_int(r[1]))
    _ok("ingestEntries", r)
    return IngestResult(as_int(r[1]), as_int(r[2]), as_int(r[3]))


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

    async def ingest_many(
        self, calls: Sequence[IngestCall]
    ) -> list[IngestResult | E.StreamwardError]:
        """Several sessions' ``ingest_entries`` in one pipelined round trip; each call's
        refusal (StaleToken, NotOwner, SeqGap) is returned in its place, not raised: one
        stale owner must not fail the others' batches."""
        script = self._by_name["ingestEntries"]
        built = [_ingest_call(*c) for c in calls]

        def build(pipe: Pipeline) -> None:
            for keys, args in built:
                script.queue(pipe, keys, args)

        replies = await execute_pipeline(self._client, script, build, alone=True)
        out: list[IngestResult | E.StreamwardError] = []
        for call, raw in zip(calls, replies, strict=True):
            try:
                out.append(_ingest_reply(call[1], raw))
            except E.StreamwardError as exc:
                out.append(exc)
        return out
