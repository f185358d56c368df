"""``Streams`` calls for the work queues (``sw:work[:<type>]``, group "runners") and the
replicas' mailboxes (``sw:replica:{R}:mail``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from streamward.lua import autopipe
from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.keys import DEFAULT_TYPE

# sw:work has no MAXLEN: consumers XACK + XDEL, so it only ever holds undelivered or
# unacked entries, and trimming would drop exactly those (wake-ups nobody read yet)
MAIL_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class WorkItem:
    """An entry of a work stream: a session (of ``session_type``) that needs an owner."""

    id: str
    session_ref: str
    reason: str
    session_type: str = DEFAULT_TYPE  # whose stream it was read from (ack goes there)


@dataclass(frozen=True, slots=True)
class StartNotice:
    """What an owner publishes on the waiting API process's channel when it takes an input
    to run it (``Streams.publish_start``): the detached invoke's 202 without the log."""

    session_ref: str
    run_id: str
    replica_id: str
    token: int

    def encode(self) -> bytes:
        return orjson.dumps([self.session_ref, self.run_id, self.replica_id, self.token])

    @classmethod
    def parse(cls, raw: bytes | str) -> StartNotice | None:
        """None for anything that is not a notice (the channel is open to any client)."""
        try:
            ref, run_id, replica_id, token = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if not all(isinstance(x, str) for x in (ref, run_id, replica_id)):
            return None
        if not isinstance(token, int) or isinstance(token, bool):
            return None
        return cls(ref, run_id, replica_id, token)


@dataclass(frozen=True, slots=True)
class Mail:
    """A notification in a replica's mailbox."""

    id: str
    kind: str  # input | cancel | drain | wake | released (force-released by an operator)
    session_ref: str
    run_id: str
    # an input mail's mode ("" = not named: an older API, a sweep; may interrupt)
    multitask: str = ""


def _mail(mail_id: Any, f: dict[str, str]) -> Mail:
    get = f.get
    return Mail(_s(mail_id), get("kind", ""), get("session", ""), get("run_id", ""),
                get("multitask", ""))  # fmt: skip


class WorkQueue(StreamsBase):
    """Sessions that need an owner, and notifications to one replica.

    One work stream per session type (``Keys.work_for``: ``sw:work`` for the default type,
    ``sw:work:<type>`` for the others), each with its own group "runners": a runner reads
    only the streams of the types it serves, so it never claims another type's session.
    """

    # -- work queues (sw:work[:<type>], consumer group "runners") --------------------------------

    async def ensure_work_group(self, session_type: str = DEFAULT_TYPE) -> None:
        # id 0: work published before any runner of the type existed is delivered too
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.client.xgroup_create(
                self.keys.work_for(session_type), self.keys.work_group, id="0", mkstream=True
            )

    async def session_types(self, session_refs: list[str]) -> dict[str, str]:
        """Each session's type (meta ``type``; the default when unset), pipelined."""
        if not session_refs:
            return {}

        def build(pipe: Any) -> None:
            for ref in session_refs:
                pipe.hget(self.keys.session_ref(ref).meta, "type")

        got = await autopipe.execute(self.client, build)
        return {ref: _s(t) if t else DEFAULT_TYPE for ref, t in zip(session_refs, got, strict=True)}

    async def publish_work(
        self, session_ref: str, reason: str, session_type: str | None = None
    ) -> str:
        """Queue ``session_ref`` on its type's stream; ``None`` reads the type from meta
        (one more round trip: callers that know it pass it)."""
        if session_type is None:
            session_type = (await self.session_types([session_ref]))[session_ref]
        fields = {"session": session_ref, "reason": reason}
        if session_type == DEFAULT_TYPE:
            added = await autopipe.execute(self.client, lambda p: p.xadd(self.keys.work, fields))
            return _s(added[0])
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.keys.work_for(session_type), fields)
        pipe.sadd(self.keys.work_types, session_type)
        return _s((await pipe.execute())[0])

    async def publish_start(self, channel: str, notice: StartNotice) -> None:
        """Tell the API process waiting on ``channel`` that a run started (at most once: a
        notice nobody hears is fine, the waiter reads the log in the end)."""
        await autopipe.execute(self.client, lambda p: p.publish(channel, notice.encode()))

    async def publish_work_many(
        self, session_refs: list[str], reason: str, types: dict[str, str] | None = None
    ) -> None:
        """``publish_work`` for many sessions: their types read in one pipelined round trip
        (unless given), the entries written in another."""
        if not session_refs:
            return
        if types is None:
            types = await self.session_types(session_refs)
        pipe = self.client.pipeline(transaction=False)
        for ref in session_refs:
            session_type = types.get(ref, DEFAULT_TYPE)
            pipe.xadd(self.keys.work_for(session_type), {"session": ref, "reason": reason})
        for session_type in set(types.values()) - {DEFAULT_TYPE}:
            pipe.sadd(self.keys.work_types, session_type)
        await pipe.execute()

    async def read_work(
        self, consumer: str, count: int, block_ms: int, session_type: str = DEFAULT_TYPE
    ) -> list[WorkItem]:
        stream = self.keys.work_for(session_type)
        reply = await self.client.xreadgroup(
            self.keys.work_group, consumer, {stream: ">"}, count=count, block=block_ms
        )
        return [
            WorkItem(_s(i), f["session"], f.get("reason", ""), session_type)
            for _, items in reply or []
            for i, f in items
        ]

    async def autoclaim_work(
        self, consumer: str, min_idle_ms: int, count: int, session_type: str = DEFAULT_TYPE
    ) -> list[WorkItem]:
        """Reclaim entries left pending by consumers that died before acking (XAUTOCLAIM)."""
        reply = await self.client.xautoclaim(
            self.keys.work_for(session_type),
            self.keys.work_group,
            consumer,
            min_idle_ms,
            "0-0",
            count=count,
        )
        items = reply[1] if reply else []
        return [
            WorkItem(_s(i), f["session"], f.get("reason", ""), session_type) for i, f in items if f
        ]

    async def ack_work(self, *ids: str, session_type: str = DEFAULT_TYPE) -> None:
        if not ids:
            return
        stream = self.keys.work_for(session_type)

        def build(pipe: Any) -> None:
            pipe.xack(stream, self.keys.work_group, *ids)
            pipe.xdel(stream, *ids)  # acked entries are never read again: keep it small

        await autopipe.execute(self.client, build)

    async def work_backlog(self, session_type: str | None = None) -> int:
        """Entries not yet delivered or not yet acked (KEDA scales on this): of one type's
        stream, or (``None``) of every type's."""
        if session_type is None:
            return sum((await self.work_backlog_by_type()).values())
        stream = self.keys.work_for(session_type)
        try:
            groups = await self.client.xinfo_groups(stream)
        except ResponseError:
            return 0
        if not any(g.get("name") == self.keys.work_group for g in groups):
            # no runner of this type ever started: every entry waits
            return int(await self.client.xlen(stream))
        total = 0
        for g in groups:
            if g.get("name") == self.keys.work_group:
                total += int(g.get("pending") or 0) + int(g.get("lag") or 0)
        return total

    async def work_types(self) -> set[str]:
        """The default type and every type work was ever published for."""
        return {DEFAULT_TYPE, *(_s(t) for t in await self.client.smembers(self.keys.work_types))}

    async def work_backlog_by_type(self) -> dict[str, int]:
        types = sorted(await self.work_types())
        return {t: await self.work_backlog(t) for t in types}

    # -- mailboxes (sw:replica:{R}:mail) -------------------------------------------------------

    async def send_mail(
        self, replica_id: str, kind: str, session_ref: str = "", run_id: str = ""
    ) -> str:
        return _s(
            await self.client.xadd(
                self.keys.replica(replica_id).mail,
                {"kind": kind, "session": session_ref, "run_id": run_id},
                maxlen=MAIL_MAXLEN,
                approximate=True,
            )
        )

    async def send_mail_many(self, mails: list[tuple[str, str, str]]) -> None:
        """``send_mail`` for many (replica_id, kind, session_ref) in one pipelined round trip."""
        if not mails:
            return
        pipe = self.client.pipeline(transaction=False)
        for replica_id, kind, ref in mails:
            pipe.xadd(
                self.keys.replica(replica_id).mail,
                {"kind": kind, "session": ref, "run_id": ""},
                maxlen=MAIL_MAXLEN,
                approximate=True,
            )
        await pipe.execute()

    async def mail_last_id(self, replica_id: str) -> str:
        tail = await self.client.xrevrange(self.keys.replica(replica_id).mail, count=1)
        return _s(tail[0][0]) if tail else "0-0"

    async def read_mail(
        self, replica_id: str, after: str, block_ms: int, count: int = 100
    ) -> list[Mail]:
        reply = await self.client.xread(
            {self.keys.replica(replica_id).mail: after}, count=count, block=block_ms
        )
        return [_mail(i, f) for _, items in reply or [] for i, f in items]
