"""Typed async calls for streamward's streams and indexes: work queue, mailboxes, inbox, log.

Like lua/store.py, this is the only way api/ and runner/ touch these keys. Every call is
single-key or stays inside one session's hash tag (Cluster-safe).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError, WatchError

from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys

WORK_MAXLEN = 100_000
MAIL_MAXLEN = 10_000
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


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
    kind: str  # input | cancel | drain | wake
    session_ref: str
    run_id: str


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A pending invocation in a session inbox."""

    id: str
    run_id: str
    input: Any
    multitask: str
    source: str
    enqueued_ms: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A stored transcript entry (``data`` decoded from JSON)."""

    id: str
    seq: int
    type: str
    run_id: str
    token: int
    data: Any
    ts_ms: int

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


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


@dataclass(slots=True)
class ReplicaInfo:
    replica_id: str
    alive: bool
    last_heartbeat_ms: int
    fields: dict[str, str] = field(default_factory=dict)
    leases: int = 0
    ttl_ms: int | None = None


def parse_log_entry(entry_id: str, fields: dict[str, str]) -> LogEntry:
    return LogEntry(
        id=_s(entry_id),
        seq=int(fields["seq"]),
        type=fields["type"],
        run_id=fields.get("run_id", ""),
        token=int(fields.get("token", "0")),
        data=orjson.loads(fields.get("data") or "null"),
        ts_ms=int(fields.get("ts") or 0),
    )


def parse_inbox(entry_id: str, fields: dict[str, str]) -> InboxItem:
    return InboxItem(
        id=_s(entry_id),
        run_id=fields["run_id"],
        input=orjson.loads(fields.get("input") or "null"),
        multitask=fields.get("multitask", "enqueue"),
        source=fields.get("source", "invoke"),
        enqueued_ms=int(fields.get("enqueued_ms") or 0),
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


class Streams:
    """Work queue, mailboxes, inbox, log, meta, attachments and indexes."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        # The client always decodes responses; redis-py types replies as unions of
        # bytes/str/None for both modes, so replies are read through Any here.
        self.client: Any = client
        self.keys = keys or Keys()

    async def now_ms(self) -> int:
        """Redis server time in ms (streamward never trusts local wall clocks for leases)."""
        sec, usec = await self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    # -- work queue (sw:work, consumer group "runners") --------------------------------

    async def ensure_work_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.client.xgroup_create(
                self.keys.work, self.keys.work_group, id="0", mkstream=True
            )

    async def publish_work(self, session_ref: str, reason: str) -> str:
        return _s(
            await self.client.xadd(
                self.keys.work,
                {"session": session_ref, "reason": reason},
                maxlen=WORK_MAXLEN,
                approximate=True,
            )
        )

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

    # -- mailboxes (sw:replica:{R}:mail) ------------------------------------------------

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

    # -- inbox ---------------------------------------------------------------------------

    async def read_inbox(self, session: SessionKeys, count: int = 10) -> list[InboxItem]:
        items = await self.client.xrange(session.inbox, count=count)
        return [parse_inbox(i, f) for i, f in items]

    async def pending(self, session: SessionKeys) -> int:
        return int(await self.client.xlen(session.inbox))

    # -- log -------------------------------------------------------------------------------

    async def log_last_id(self, session: SessionKeys) -> str:
        tail = await self.client.xrevrange(session.log, count=1)
        return _s(tail[0][0]) if tail else "0-0"

    async def last_seq(self, session: SessionKeys) -> int:
        return int(self.log_last_id_seq(await self.log_last_id(session)))

    @staticmethod
    def log_last_id_seq(entry_id: str) -> int:
        return int(entry_id.split("-", 1)[0])

    async def read_log(
        self, session: SessionKeys, after: str = "0-0", count: int = 100
    ) -> list[LogEntry]:
        """Entries strictly after ``after``, oldest first."""
        items = await self.client.xrange(session.log, min=f"({after}", count=count)
        return [parse_log_entry(i, f) for i, f in items]

    async def read_log_tail(self, session: SessionKeys, count: int) -> list[LogEntry]:
        items = await self.client.xrevrange(session.log, count=count)
        return [parse_log_entry(i, f) for i, f in reversed(items)]

    async def wait_log(
        self, session: SessionKeys, after: str, block_ms: int, count: int = 100
    ) -> list[LogEntry]:
        """Block up to ``block_ms`` for entries after ``after`` (XREAD BLOCK)."""
        reply = await self.client.xread({session.log: after}, count=count, block=block_ms)
        return [parse_log_entry(i, f) for _, items in reply or [] for i, f in items]

    # -- meta, runs, cancels -------------------------------------------------------------

    async def meta(self, session: SessionKeys) -> dict[str, str]:
        return dict(await self.client.hgetall(session.meta))

    async def set_meta(self, session: SessionKeys, **fields: str | int) -> None:
        await self.client.hset(session.meta, mapping=fields)

    async def run_state(self, session: SessionKeys, run_id: str) -> RunState | None:
        raw = await self.client.hget(session.runs, run_id)
        return None if raw is None else parse_run_state(run_id, raw)

    async def request_cancel(self, session: SessionKeys, run_id: str) -> None:
        await self.client.sadd(session.cancels, run_id)

    async def cancel_requested(self, session: SessionKeys, run_id: str) -> bool:
        return bool(await self.client.sismember(session.cancels, run_id))

    async def clear_cancel(self, session: SessionKeys, run_id: str) -> None:
        await self.client.srem(session.cancels, run_id)

    # -- attached clients ----------------------------------------------------------------

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

    # -- session index ---------------------------------------------------------------------

    async def touch_session(self, session: SessionKeys, now_ms: int | None = None) -> None:
        now = now_ms if now_ms is not None else await self.now_ms()
        await self.client.zadd(self.keys.sessions, {session.ref: now})

    async def scan_sessions(
        self, cursor: int = 0, project: str | None = None, count: int = 100
    ) -> tuple[int, list[tuple[str, int]]]:
        """One ZSCAN page of the session index: (next cursor, [(ref, last_activity_ms)])."""
        match = f"{project}/*" if project else None
        nxt, items = await self.client.zscan(self.keys.sessions, cursor, match=match, count=count)
        return int(nxt), [(_s(m), int(score)) for m, score in items]

    async def forget_session(self, session: SessionKeys) -> None:
        await self.client.zrem(self.keys.sessions, session.ref)

    # -- replicas --------------------------------------------------------------------------

    async def replica_ids(self) -> list[tuple[str, int]]:
        """Replicas seen by heartbeat: (replica_id, last heartbeat ms), oldest first."""
        items = await self.client.zrange(self.keys.replicas, 0, -1, withscores=True)
        return [(_s(m), int(s)) for m, s in items]

    async def replica_info(self, replica_id: str, last_heartbeat_ms: int = 0) -> ReplicaInfo:
        rk = self.keys.replica(replica_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(rk.lease)
        pipe.scard(rk.leases)
        pipe.pttl(rk.lease)
        fields, n, ttl = await pipe.execute()
        return ReplicaInfo(
            replica_id=replica_id,
            alive=bool(fields),
            last_heartbeat_ms=int(fields.get("heartbeat_ms", last_heartbeat_ms))
            if fields
            else last_heartbeat_ms,
            fields=dict(fields),
            leases=int(n),
            ttl_ms=int(ttl) if int(ttl) >= 0 else None,
        )

    async def replica_sessions(self, replica_id: str) -> list[str]:
        members = await self.client.smembers(self.keys.replica(replica_id).leases)
        return sorted(_s(m) for m in members)

    async def forget_replica(self, replica_id: str) -> None:
        """Drop a dead replica's index and heartbeat entry (its leases stay the truth)."""
        rk = self.keys.replica(replica_id)
        await self.client.delete(rk.leases)
        await self.client.delete(rk.mail)
        await self.client.zrem(self.keys.replicas, replica_id)

    async def delete_replica_lease(self, replica_id: str, incarnation: str) -> None:
        """Delete our own replica lease on clean exit (only if it still names us)."""
        rk = self.keys.replica(replica_id)
        cur = await self.client.hget(rk.lease, "incarnation")
        if cur is not None and _s(cur) == incarnation:
            await self.client.delete(rk.lease)

    # -- API helpers (issue 4) --------------------------------------------------------------

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

    async def mark_replica_draining(self, replica_id: str) -> bool:
        """Set ``draining=1`` on a live replica lease; False when the replica is gone.

        WATCH makes the HSET conditional on the key still existing, so a lease that expires
        meanwhile is never resurrected as a TTL-less hash.
        """
        rk = self.keys.replica(replica_id)
        for _ in range(5):  # the replica's own renewals touch the key: retry on a conflict
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(rk.lease)
                # HLEN, not EXISTS: a cluster pipeline splits EXISTS by slot and, once
                # watching, never runs it (redis-py returns the pipeline, always truthy)
                if not await pipe.hlen(rk.lease):
                    await pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(rk.lease, "draining", "1")
                try:
                    await pipe.execute()
                except WatchError:
                    continue
                return True
        return False

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

    # -- runner helpers (issue 3) -----------------------------------------------------------

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

    async def replicas_alive(self, replica_ids: list[str]) -> list[bool]:
        """Whether each replica lease key exists (one pipelined round trip)."""
        if not replica_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rid in replica_ids:
            pipe.exists(self.keys.replica(rid).lease)
        return [bool(x) for x in await pipe.execute()]

    async def publish_work_many(self, session_refs: list[str], reason: str) -> None:
        """``publish_work`` for many sessions in one pipelined round trip."""
        if not session_refs:
            return
        pipe = self.client.pipeline(transaction=False)
        for ref in session_refs:
            pipe.xadd(
                self.keys.work,
                {"session": ref, "reason": reason},
                maxlen=WORK_MAXLEN,
                approximate=True,
            )
        await pipe.execute()

    async def index_sessions(self, replica_id: str, session_refs: list[str]) -> None:
        """Re-add sessions to a replica's lease index (heals an index a watchdog raced)."""
        if session_refs:
            await self.client.sadd(self.keys.replica(replica_id).leases, *session_refs)

    # -- lifecycle (event routing) -----------------------------------------------------------

    async def retire_session(
        self, session: SessionKeys, status: str, reason: str, retention_ms: int
    ) -> int:
        """Mark a session expired/deleted and let all its keys expire after ``retention_ms``.

        Returns the deletion time (Redis ms). The epoch goes too: a retired session's id is
        never reused (a new generation gets a new id), so no stale token can meet a reset
        epoch; a manually deleted id that is invoked again before retention keeps its epoch.
        """
        now = await self.now_ms()
        delete_after = now + retention_ms
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            session.meta,
            mapping={
                "status": status,
                "reason": reason,
                "ended_ms": now,
                "delete_after_ms": delete_after,
                "updated_ms": now,
            },
        )
        for key in (
            session.meta,
            session.log,
            session.inbox,
            session.runs,
            session.attached,
            session.cancels,
            session.epoch,
        ):
            pipe.pexpire(key, retention_ms)
        await pipe.execute()
        return delete_after

    async def revive_session(self, session: SessionKeys) -> None:
        """Keep a retired session's keys after all (enqueueInput revived its inbox and meta)."""
        pipe = self.client.pipeline(transaction=False)
        for key in (session.log, session.runs, session.epoch, session.attached, session.cancels):
            pipe.persist(key)
        await pipe.execute()
