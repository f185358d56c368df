"""``Streams`` calls for the indexes: ``sw:sessions``, ``sw:replicas`` and each replica's
lease index, plus session retirement (event routing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import WatchError

from streamward.lua import autopipe
from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.keys import Keys, SessionKeys


def queue_touch(
    pipe: Any,
    keys: Keys,
    session: SessionKeys,
    now_ms: int,
    created_ms: int | None = None,
    *,
    existing_only: bool = False,
) -> None:
    """Queue the index writes of one session's activity on ``pipe`` (non-transactional: on
    Cluster the project indexes are another slot than ``sw:sessions``). ``existing_only``:
    update the scores of a session already indexed, never add one (XX)."""
    pk = keys.project_index(session.project)
    if existing_only:
        pipe.zadd(keys.sessions, {session.ref: now_ms}, xx=True)
        pipe.zadd(pk.updated, {session.session_id: now_ms}, xx=True, gt=True)
        return
    pipe.zadd(keys.sessions, {session.ref: now_ms})
    # NX: the creation time never moves; GT: a late writer never moves activity back
    pipe.zadd(pk.created, {session.session_id: created_ms or now_ms}, nx=True)
    pipe.zadd(pk.updated, {session.session_id: now_ms}, gt=True)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class PendingProbe:
    """What the liveness sweep reads of one indexed session."""

    pending: int  # inputs in the inbox
    held_back: bool  # every input waits behind hold_until_id (queue policy)
    replica_id: str  # lease holder ("" when free)
    incarnation: str
    owner_alive: bool = False  # the holder's replica lease names its incarnation

    @property
    def runnable(self) -> bool:
        return self.pending > 0 and not self.held_back


@dataclass(slots=True)
class ReplicaInfo:
    replica_id: str
    alive: bool
    last_heartbeat_ms: int
    fields: dict[str, str] = field(default_factory=dict)
    leases: int = 0
    ttl_ms: int | None = None


class Indexes(StreamsBase):
    """Session and replica indexes, replica bookkeeping and session lifecycle."""

    # -- session index -------------------------------------------------------------------------
    # Every writer that creates, changes or deletes a session calls ``touch_session`` /
    # ``forget_session``: they keep the global ``sw:sessions`` (watchdog, archiver) and the
    # project's listing indexes (``Keys.project_index``) together. The project indexes live
    # in the project's slot, not the session's, so they are separate commands (pipelined).

    async def touch_session(
        self, session: SessionKeys, now_ms: int | None = None, *, created_ms: int | None = None
    ) -> None:
        """Record activity on a session (created, input accepted, changed through the API).

        ``created_ms``: the session's creation time when the caller knows it (else ``now``,
        which is the creation time for a new session; an indexed one keeps its score)."""
        now = now_ms if now_ms is not None else await self.now_ms()
        await autopipe.execute(
            self.client, lambda pipe: queue_touch(pipe, self.keys, session, now, created_ms)
        )

    async def scan_sessions(
        self, cursor: int = 0, project: str | None = None, count: int = 100
    ) -> tuple[int, list[tuple[str, int]]]:
        """One ZSCAN page of the session index: (next cursor, [(ref, last_activity_ms)])."""
        match = f"{project}/*" if project else None
        nxt, items = await self.client.zscan(self.keys.sessions, cursor, match=match, count=count)
        return int(nxt), [(_s(m), int(score)) for m, score in items]

    async def forget_session(self, session: SessionKeys) -> None:
        """A deleted session leaves every index (it is no longer listed)."""
        pk = self.keys.project_index(session.project)
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.sessions, session.ref)
        pipe.zrem(pk.created, session.session_id)
        pipe.zrem(pk.updated, session.session_id)
        await pipe.execute()

    async def count_sessions(self, project: str) -> int:
        """How many sessions the project's index lists (deleted ones excluded)."""
        return int(await self.client.zcard(self.keys.project_index(project).created))

    async def backfill_project_indexes(self, batch: int = 500) -> int:
        """Copy sessions indexed only in ``sw:sessions`` (written before the project indexes
        existed) into their project's indexes; once done, a marker key skips it for good.
        Idempotent (NX / GT adds), so several API processes may run it at once. Returns the
        number of sessions visited (0 when the marker was already set)."""
        if await self.client.exists(self.keys.project_indexes_backfilled):
            return 0
        seen, cursor = 0, 0
        while True:
            cursor, items = await self.scan_sessions(cursor, count=batch)
            sks = []
            for ref, score in items:
                try:
                    sks.append((self.keys.session_ref(ref), score))
                except ValueError:  # InvalidId: not a ref we could have written
                    continue
            if sks:
                pipe = self.client.pipeline(transaction=False)
                for sk, _ in sks:
                    pipe.hget(sk.meta, "created_ms")
                created = await pipe.execute()
                pipe = self.client.pipeline(transaction=False)
                for (sk, score), c in zip(sks, created, strict=True):
                    if c is not None:  # a session whose keys expired is not listed again
                        pk = self.keys.project_index(sk.project)
                        pipe.zadd(pk.created, {sk.session_id: int(c)}, nx=True)
                        pipe.zadd(pk.updated, {sk.session_id: score}, gt=True)
                await pipe.execute()
                seen += len(sks)
            if cursor == 0:
                break
        await self.client.set(self.keys.project_indexes_backfilled, "1")
        return seen

    # -- pending index (sw:pending: sessions that may have input waiting) ----------------------

    async def pending_due(self, before_ms: int, count: int) -> list[tuple[str, int]]:
        """The oldest ``count`` pending-index entries scored at or before ``before_ms``."""
        items = await self.client.zrangebyscore(
            self.keys.pending, "-inf", before_ms, start=0, num=count, withscores=True
        )
        return [(_s(m), int(score)) for m, score in items]

    async def pending_size(self) -> int:
        return int(await self.client.zcard(self.keys.pending))

    async def probe_pending(self, sessions: list[SessionKeys]) -> list[PendingProbe]:
        """For each session: inputs waiting, whether all are held (queue policy), and the
        lease holder with whether its replica is alive. Two pipelined round trips."""
        if not sessions:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sk in sessions:
            pipe.xlen(sk.inbox)
            pipe.xrevrange(sk.inbox, count=1)
            pipe.hget(sk.meta, "hold_until_id")
            pipe.hmget(sk.lease, "replica", "incarnation")
        raw = await pipe.execute()
        out: list[PendingProbe] = []
        for i in range(len(sessions)):
            n, tail, hold, holder = raw[4 * i : 4 * i + 4]
            last = _s(tail[0][0]) if tail else "0-0"
            held_back = hold is not None and _stream_id(last) <= _stream_id(_s(hold))
            replica = _s(holder[0]) if holder and holder[0] is not None else ""
            inc = _s(holder[1]) if holder and holder[1] is not None else ""
            out.append(PendingProbe(int(n), held_back, replica, inc))
        holders = [p for p in out if p.replica_id]
        if holders:
            pipe = self.client.pipeline(transaction=False)
            for p in holders:
                pipe.hget(self.keys.replica(p.replica_id).lease, "incarnation")
            for p, cur in zip(holders, await pipe.execute(), strict=True):
                p.owner_alive = cur is not None and _s(cur) == p.incarnation
        return out

    async def bump_pending(self, refs: list[str], now_ms: int) -> None:
        """Re-score entries still in the index (XX: never re-adds a pruned one)."""
        if refs:
            await self.client.zadd(self.keys.pending, dict.fromkeys(refs, now_ms), xx=True)

    async def ownership_history(
        self, session: SessionKeys, count: int = 200
    ) -> list[tuple[str, dict[str, str]]]:
        """The session's ownership changes (sw:{S}:history), newest first: (id, fields)."""
        items = await self.client.xrevrange(session.history, count=count)
        return [(_s(i), {_s(k): _s(v) for k, v in f.items()}) for i, f in items]

    # -- replicas ------------------------------------------------------------------------------

    async def replica_ids(self) -> list[tuple[str, int]]:
        """Replicas seen by heartbeat: (replica_id, last heartbeat ms), oldest first."""
        items = await self.client.zrange(self.keys.replicas, 0, -1, withscores=True)
        return [(_s(m), int(s)) for m, s in items]

    async def served_types(self) -> set[str]:
        """Session types some live, not draining replica serves (its hash's ``types``; one
        from before session types serves ``default``)."""
        ids = [r for r, _ in await self.replica_ids()]
        if not ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.hmget(self.keys.replica(rid).lease, "incarnation", "draining", "types")
        served: set[str] = set()
        for incarnation, draining, types in await pipe.execute():
            if incarnation and draining != "1":
                served.update(t for t in (types if types is not None else "default").split(","))
        served.discard("")
        return served

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

    async def replicas_alive(self, replica_ids: list[str]) -> list[bool]:
        """Whether each replica lease key exists (one pipelined round trip)."""
        if not replica_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rid in replica_ids:
            pipe.exists(self.keys.replica(rid).lease)
        return [bool(x) for x in await pipe.execute()]

    async def index_sessions(self, replica_id: str, session_refs: list[str]) -> None:
        """Re-add sessions to a replica's lease index (heals an index a watchdog raced)."""
        if session_refs:
            await self.client.sadd(self.keys.replica(replica_id).leases, *session_refs)

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

    # -- lifecycle (event routing) -------------------------------------------------------------

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
            session.state,
            session.epoch,
            session.history,
        ):
            pipe.pexpire(key, retention_ms)
        # no longer live: it stops counting against the project's live-sessions limit
        # (another slot on Cluster: the non-transactional pipeline sends it apart)
        pipe.zrem(self.keys.quota(session.project).live, session.ref)
        await pipe.execute()
        return delete_after

    async def revive_session(self, session: SessionKeys) -> None:
        """Keep a retired session's keys after all (enqueueInput revived its inbox and meta),
        and list it again under its first creation time (a delete took it off the indexes)."""
        created = await self.client.hget(session.meta, "created_ms")
        if created is not None:
            pk = self.keys.project_index(session.project)
            await self.client.zadd(pk.created, {session.session_id: int(created)}, nx=True)
        pipe = self.client.pipeline(transaction=False)
        for key in (
            session.log,
            session.runs,
            session.epoch,
            session.attached,
            session.cancels,
            session.history,
            session.state,
        ):
            pipe.persist(key)
        await pipe.execute()
