"""``Streams`` calls for the work queue (``sw:work``, group "runners") and the replicas'
mailboxes (``sw:replica:{R}:mail``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from redis.exceptions import ResponseError

from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s

# sw:work has no MAXLEN: consumers XACK + XDEL, so it only ever holds undelivered or
# unacked entries, and trimming would drop exactly those (wake-ups nobody read yet)
MAIL_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class WorkItem:
    """An entry of ``sw:work``: a session that needs an owner."""

    id: str
    session_ref: str
    reason: str


@dataclass(frozen=True, slots=True)
class Mail:
    """A notification in a replica's mailbox."""

    id: str
    kind: str  # input | cancel | drain | wake | released (force-released by an operator)
    session_ref: str
    run_id: str


class WorkQueue(StreamsBase):
    """Sessions that need an owner, and notifications to one replica."""

    # -- work queue (sw:work, consumer group "runners") ----------------------------------------

    async def ensure_work_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.client.xgroup_create(
                self.keys.work, self.keys.work_group, id="0", mkstream=True
            )

    async def publish_work(self, session_ref: str, reason: str) -> str:
        return _s(
            await self.client.xadd(self.keys.work, {"session": session_ref, "reason": reason})
        )

    async def publish_work_many(self, session_refs: list[str], reason: str) -> None:
        """``publish_work`` for many sessions in one pipelined round trip."""
        if not session_refs:
            return
        pipe = self.client.pipeline(transaction=False)
        for ref in session_refs:
            pipe.xadd(self.keys.work, {"session": ref, "reason": reason})
        await pipe.execute()

    async def read_work(self, consumer: str, count: int, block_ms: int) -> list[WorkItem]:
        reply = await self.client.xreadgroup(
            self.keys.work_group, consumer, {self.keys.work: ">"}, count=count, block=block_ms
        )
        return [
            WorkItem(_s(i), f["session"], f.get("reason", ""))
            for _, items in reply or []
            for i, f in items
        ]

    async def autoclaim_work(self, consumer: str, min_idle_ms: int, count: int) -> list[WorkItem]:
        """Reclaim entries left pending by consumers that died before acking (XAUTOCLAIM)."""
        reply = await self.client.xautoclaim(
            self.keys.work, self.keys.work_group, consumer, min_idle_ms, "0-0", count=count
        )
        items = reply[1] if reply else []
        return [WorkItem(_s(i), f["session"], f.get("reason", "")) for i, f in items if f]

    async def ack_work(self, *ids: str) -> None:
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.keys.work, self.keys.work_group, *ids)
        pipe.xdel(self.keys.work, *ids)  # acked entries are never read again: keep it small
        await pipe.execute()

    async def work_backlog(self) -> int:
        """Entries not yet delivered or not yet acked (KEDA scales on this)."""
        try:
            groups = await self.client.xinfo_groups(self.keys.work)
        except ResponseError:
            return 0
        total = 0
        for g in groups:
            if g.get("name") == self.keys.work_group:
                total += int(g.get("pending") or 0) + int(g.get("lag") or 0)
        return total

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
        return [
            Mail(_s(i), f.get("kind", ""), f.get("session", ""), f.get("run_id", ""))
            for _, items in reply or []
            for i, f in items
        ]
