"""``Streams`` calls for one session's state beside its log: inbox, meta, runs, cancel
requests and attached clients (all keys in the session's hash tag)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.keys import SessionKeys


@dataclass(frozen=True, slots=True)
class InboxMeta:
    """What the lookahead needs of a pending input: never its (possibly large) input."""

    id: str
    run_id: str
    multitask: str


@dataclass(frozen=True, slots=True)
class InboxItem(InboxMeta):
    """A pending invocation in a session inbox, its input parsed (``input_json``: as stored;
    ``traceparent``: the W3C trace context its run continues, "" for none or an older entry;
    ``starts_to``: the channel of the API process waiting for the run's start, "" for none)."""

    input: Any
    source: str
    enqueued_ms: int
    input_json: str = "null"
    traceparent: str = ""
    starts_to: str = ""


@dataclass(frozen=True, slots=True)
class RawInboxEntry:
    """An inbox entry whose input is still JSON text: ``parse()`` it (off the event loop
    when ``input_bytes`` is large)."""

    id: str
    fields: dict[str, str]

    @property
    def input_bytes(self) -> int:
        return len(self.fields.get("input") or "")

    def parse(self) -> InboxItem:
        return parse_inbox(self.id, self.fields)


@dataclass(frozen=True, slots=True)
class RunState:
    """``sw:{S}:runs`` value: the latest state of one run, kept by the ingest script."""

    run_id: str
    status: str  # started | completed | failed | cancelled | interrupted
    token: int | None = None
    replica_id: str | None = None
    attempt: int | None = None
    started_id: str | None = None
    last_id: str | None = None
    updated_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SavedState:
    """``sw:{S}:state``: a session host's last snapshot (written by ``saveState-3``)."""

    data: str  # JSON text
    token: int
    replica_id: str
    saved_ms: int

    def value(self) -> Any:
        return orjson.loads(self.data)


def parse_inbox(entry_id: str, fields: dict[str, str]) -> InboxItem:
    text = fields.get("input") or "null"
    return InboxItem(
        id=_s(entry_id),
        run_id=fields["run_id"],
        input=orjson.loads(text),
        input_json=text,
        multitask=fields.get("multitask", "enqueue"),
        source=fields.get("source", "invoke"),
        enqueued_ms=int(fields.get("enqueued_ms") or 0),
        traceparent=fields.get("trace", ""),
        starts_to=fields.get("starts_to", ""),
    )


def parse_run_state(run_id: str, raw: str | bytes) -> RunState:
    """A ``sw:{S}:runs`` value (JSON, kept by the ingest script)."""
    d = orjson.loads(raw)
    return RunState(
        run_id=run_id,
        status=str(d.get("status", "")),
        token=d.get("token"),
        replica_id=d.get("replica_id"),
        attempt=d.get("attempt"),
        started_id=d.get("started_id"),
        last_id=d.get("last_id"),
        updated_ms=d.get("updated_ms"),
    )


class SessionState(StreamsBase):
    """Inbox, meta, runs, cancels and attachments of one session."""

    # -- inbox ---------------------------------------------------------------------------------

    async def read_inbox(self, session: SessionKeys, count: int = 10) -> list[InboxItem]:
        items = await self.client.xrange(session.inbox, count=count)
        return [parse_inbox(i, f) for i, f in items]

    async def pending(self, session: SessionKeys) -> int:
        return int(await self.client.xlen(session.inbox))

    async def inbox_last_id(self, session: SessionKeys) -> str:
        """Id of the newest pending input ("0-0" when the inbox is empty)."""
        tail = await self.client.xrevrange(session.inbox, count=1)
        return _s(tail[0][0]) if tail else "0-0"

    async def sweep_sessions(self, items: list[tuple[SessionKeys, str]]) -> list[tuple[int, bool]]:
        """Per (session, running run id or ""): (pending inputs, cancel requested), pipelined."""
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sk, run_id in items:
            pipe.xlen(sk.inbox)
            pipe.sismember(sk.cancels, run_id or "-")
        replies = await pipe.execute()
        return [
            (int(replies[2 * i]), bool(replies[2 * i + 1]) and bool(run_id))
            for i, (_, run_id) in enumerate(items)
        ]

    # -- meta, runs, cancels -------------------------------------------------------------------

    async def meta(self, session: SessionKeys) -> dict[str, str]:
        return dict(await self.client.hgetall(session.meta))

    async def set_meta(self, session: SessionKeys, **fields: str | int) -> None:
        await self.client.hset(session.meta, mapping=fields)

    async def read_state(self, session: SessionKeys) -> SavedState | None:
        """The session host's last saved snapshot, or None when none was saved."""
        raw = await self.client.hgetall(session.state)
        if not raw:
            return None
        f = {_s(k): _s(v) for k, v in raw.items()}
        return SavedState(
            data=f.get("data", "null"),
            token=int(f.get("token") or 0),
            replica_id=f.get("replica_id", ""),
            saved_ms=int(f.get("saved_ms") or 0),
        )

    async def mark_poison(self, session: SessionKeys, run_id: str) -> None:
        """Meta ``poison_runs`` += 1 and ``last_poison_run_id``: what operators see."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(session.meta, "poison_runs", 1)
        pipe.hset(session.meta, "last_poison_run_id", run_id)
        await pipe.execute()

    async def run_state(self, session: SessionKeys, run_id: str) -> RunState | None:
        raw = await self.client.hget(session.runs, run_id)
        return None if raw is None else parse_run_state(run_id, raw)

    async def request_cancel(self, session: SessionKeys, run_id: str) -> None:
        await self.client.sadd(session.cancels, run_id)

    async def cancel_requested(self, session: SessionKeys, run_id: str) -> bool:
        return bool(await self.client.sismember(session.cancels, run_id))

    async def clear_cancel(self, session: SessionKeys, run_id: str) -> None:
        await self.client.srem(session.cancels, run_id)

    async def session_overview(self, session: SessionKeys) -> tuple[dict[str, str], int, int]:
        """(meta, pending inputs, live attached connections) in one round trip."""
        now = await self.now_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(session.meta)
        pipe.xlen(session.inbox)
        pipe.zcount(session.attached, now, "+inf")
        meta, pending, attached = await pipe.execute()
        return dict(meta), int(pending), int(attached)

    async def delete_session_state(self, session: SessionKeys) -> None:
        """Drop the inbox, attachments and cancel requests (the log and epoch are kept)."""
        await self.client.delete(session.inbox, session.attached, session.cancels)

    # -- attached clients ----------------------------------------------------------------------

    async def attach(self, session: SessionKeys, conn_id: str, ttl_ms: int) -> None:
        """Register (or refresh) an attached client connection; it expires unless refreshed."""
        now = await self.now_ms()
        await self.client.zadd(session.attached, {conn_id: now + ttl_ms})

    async def detach(self, session: SessionKeys, conn_id: str | None = None) -> int:
        """Remove one attached connection, or all of them; return how many were removed."""
        if conn_id is None:
            n = await self.client.zcard(session.attached)
            await self.client.delete(session.attached)
            return int(n)
        return int(await self.client.zrem(session.attached, conn_id))

    async def is_attached(self, session: SessionKeys, conn_id: str) -> bool:
        return await self.client.zscore(session.attached, conn_id) is not None

    async def attached_count(self, session: SessionKeys) -> int:
        now = await self.now_ms()
        return int(await self.client.zcount(session.attached, now, "+inf"))

    async def refresh_attached(self, session: SessionKeys, conn_id: str, ttl_ms: int) -> bool:
        """Extend a registered connection (never re-adds a detached one); prune expired ones.

        Returns whether ``conn_id`` is still registered.
        """
        now = await self.now_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(session.attached, {conn_id: now + ttl_ms}, xx=True)
        pipe.zremrangebyscore(session.attached, "-inf", now - 1)
        pipe.zscore(session.attached, conn_id)
        _, _, score = await pipe.execute()
        return score is not None
