"""``LeaseStore`` calls for the leases: replica lease, session lease (acquire, takeover,
release, break-glass, read) and the batch renewal of many session leases."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from streamward.lua import autopipe
from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys, validate_id
from streamward.lua.loader import execute_pipeline
from streamward.lua.replies import ForceReleased, LeaseRenewals, NoLease, Registration, as_str
from streamward.lua.scripts import Scripts, parse_renewals

RENEW_CHUNK = 100
# renewals of more than this many chunks go out as several pipelines, up to RENEW_PIPELINES
# of them in flight at once (overlaps Redis's work with the client's)
RENEW_PIPELINE_CHUNKS = 20
RENEW_PIPELINES = 4

Chunk = list[tuple[SessionKeys, int]]


@dataclass(frozen=True, slots=True)
class Lease:
    """A session lease the caller now holds."""

    session: SessionKeys
    replica_id: str
    incarnation: str
    token: int
    acquired_ms: int
    fresh: bool


@dataclass(frozen=True, slots=True)
class Ownership:
    """What Redis says about one session's owner."""

    project: str
    session_id: str
    held: bool
    epoch: int
    replica_id: str | None = None
    incarnation: str | None = None
    token: int | None = None
    acquired_ms: int | None = None
    renewed_ms: int | None = None
    lease_ttl_ms: int | None = None
    replica_alive: bool = False
    replica_ttl_ms: int | None = None

    @property
    def alive(self) -> bool:
        """The lease is valid: held, and its holder's replica lease is alive."""
        return self.held and self.replica_alive

    @property
    def expires_in_ms(self) -> int | None:
        """Time until the lease stops being valid: the earlier of the two TTLs."""
        if not self.held or self.lease_ttl_ms is None:
            return None
        if not self.replica_alive or self.replica_ttl_ms is None:
            return 0
        return max(0, min(self.lease_ttl_ms, self.replica_ttl_ms))


@dataclass(frozen=True, slots=True)
class RenewResult:
    now_ms: int
    renewed: list[SessionKeys]
    lost: list[tuple[SessionKeys, str]]  # (session, reason: expired | not_owner | stale_token)


class LeaseCalls:
    """Async, typed lease calls over one Redis client (standalone, Sentinel master or Cluster)."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.scripts = Scripts(client)
        self.cluster = isinstance(client, RedisCluster)

    # -- replica lease -----------------------------------------------------------------

    async def register_replica(
        self,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        fields: Mapping[str, str] | None = None,
    ) -> Registration:
        reg = await self.scripts.register_replica(
            self.keys.replica(replica_id), incarnation, ttl_ms, fields
        )
        await self.client.zadd(self.keys.replicas, {replica_id: reg.now_ms})
        return reg

    async def renew_replica(
        self,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        fields: Mapping[str, str] | None = None,
    ) -> int:
        """Renew the replica lease; return Redis time in ms. Raises ReplicaLost."""
        return (await self.renew_replica_checked(replica_id, incarnation, ttl_ms, fields))[0]

    async def renew_replica_checked(
        self,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Renew the replica lease: (Redis time in ms, whether Redis accepts writes).

        The script renews even in a full Redis; the ZADD of the heartbeat index after it
        is an ordinary (denyoom) write, so its refusal tells that Redis refuses writes
        without failing the renewal (the index is only a listing: liveness is the lease).
        """
        now = await self.scripts.renew_replica(
            self.keys.replica(replica_id), incarnation, ttl_ms, fields
        )
        try:
            await self.client.zadd(self.keys.replicas, {replica_id: now})
        except ResponseError as exc:
            if not E.is_write_refusal(exc):
                raise
            return now, False
        return now, True

    async def replica_alive(self, replica_id: str, incarnation: str | None = None) -> bool:
        """Whether the replica lease exists (and names ``incarnation`` when given)."""
        cur = await self.client.hget(self.keys.replica(replica_id).lease, "incarnation")
        if cur is None:
            return False
        return incarnation is None or as_str(cur) == incarnation

    # -- session lease -----------------------------------------------------------------

    async def acquire(
        self, session: SessionKeys, replica_id: str, incarnation: str, ttl_ms: int
    ) -> Lease:
        """Acquire (or confirm) a session lease. Raises LeaseHeld with the holder."""
        validate_id("replica_id", replica_id)
        g = await self.scripts.acquire_lease(session, replica_id, incarnation, ttl_ms)
        lease = Lease(session, replica_id, incarnation, g.token, g.acquired_ms, g.fresh)
        await self._index_lease(replica_id, session)
        return lease

    async def _index_lease(self, replica_id: str, session: SessionKeys) -> None:
        # with a burst of claims, shared round trips (lua/autopipe.py)
        leases = self.keys.replica(replica_id).leases
        await autopipe.execute(self.client, lambda pipe: pipe.sadd(leases, session.ref))

    async def takeover(
        self,
        session: SessionKeys,
        expected: tuple[str, str, int],
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
    ) -> Lease:
        """Compare-and-set takeover from ``expected`` = (replica, incarnation, token)."""
        validate_id("replica_id", replica_id)
        old_replica = expected[0]
        validate_id("replica_id", old_replica)  # before Redis: used for its index afterwards
        g = await self.scripts.takeover_lease(session, expected, replica_id, incarnation, ttl_ms)
        lease = Lease(session, replica_id, incarnation, g.token, g.acquired_ms, g.fresh)
        await self._index_lease(replica_id, session)
        if lease.fresh and old_replica != replica_id:
            await self.client.srem(self.keys.replica(old_replica).leases, session.ref)
        return lease

    async def release(
        self,
        session: SessionKeys,
        replica_id: str,
        incarnation: str,
        token: int,
        reason: str = "release",
    ) -> bool:
        """Owner-checked release. True if released, False if no lease was held; NotOwner else.
        ``reason`` (passivate, drain, ...) goes to the session's ownership history."""
        index = self.keys.replica(replica_id).leases
        try:
            released = await self.scripts.release_lease(
                session, replica_id, incarnation, token, reason
            )
        except E.NotOwner:  # not ours either way: the index must not list it
            await self.client.srem(index, session.ref)
            raise
        await self.client.srem(index, session.ref)
        return released

    async def force_release(
        self, session: SessionKeys, reason: str = "manual", kind: str = "force"
    ) -> ForceReleased:
        """Break-glass: delete the lease whoever holds it and bump the epoch (fences the owner).

        Records ``reason`` and ``kind`` (force | deleted) in meta and the ownership history;
        re-queueing and telling the former owner are the caller's (see api admin routes)."""
        out = await self.scripts.force_release(session, reason, kind)
        if out.old_replica_id:
            await self.client.srem(self.keys.replica(out.old_replica_id).leases, session.ref)
        return out

    async def ownership(self, session: SessionKeys) -> Ownership:
        """Lease fields + whether the holder's replica lease is alive + TTLs."""
        rec = await self.scripts.read_lease(session)
        if isinstance(rec, NoLease):
            return Ownership(session.project, session.session_id, held=False, epoch=rec.epoch)
        rk = self.keys.replica(rec.replica_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(rk.lease, "incarnation")
        pipe.pttl(rk.lease)
        cur, rttl = await pipe.execute()
        alive = cur is not None and as_str(cur) == rec.incarnation
        return Ownership(
            session.project,
            session.session_id,
            held=True,
            epoch=rec.epoch,
            replica_id=rec.replica_id,
            incarnation=rec.incarnation,
            token=rec.token,
            acquired_ms=rec.acquired_ms,
            renewed_ms=rec.renewed_ms,
            lease_ttl_ms=rec.pttl_ms,
            replica_alive=alive,
            replica_ttl_ms=int(rttl) if alive and int(rttl) >= 0 else None,
        )

    # -- batch renewal -------------------------------------------------------------------

    async def renew_many(
        self,
        replica_id: str,
        incarnation: str,
        leases: Sequence[tuple[SessionKeys, int]],
        ttl_ms: int,
        chunk: int = RENEW_CHUNK,
    ) -> RenewResult:
        """Renew many leases: one script call per chunk (grouped by slot), all pipelined."""
        groups: dict[int, Chunk] = defaultdict(list)
        for sk, token in leases:
            groups[key_slot(sk.lease.encode()) if self.cluster else 0].append((sk, token))
        chunks = [
            items[i : i + chunk] for items in groups.values() for i in range(0, len(items), chunk)
        ]
        renewed: list[SessionKeys] = []
        lost: list[tuple[SessionKeys, str]] = []
        now = 0
        if not chunks:
            return RenewResult(0, renewed, lost)
        replies = await self._run_chunks(replica_id, incarnation, ttl_ms, chunks)
        for part, reply in zip(chunks, replies, strict=True):
            now = max(now, reply.now_ms)
            for (sk, _), outcome in zip(part, reply.outcomes, strict=True):
                if outcome == "renewed":
                    renewed.append(sk)
                else:
                    lost.append((sk, outcome))
        if lost:
            await self.client.srem(
                self.keys.replica(replica_id).leases, *[sk.ref for sk, _ in lost]
            )
        return RenewResult(now, renewed, lost)

    async def _run_chunks(
        self, replica_id: str, incarnation: str, ttl_ms: int, chunks: list[Chunk]
    ) -> list[LeaseRenewals]:
        if isinstance(self.client, RedisCluster):
            raw = await self._run_chunks_cluster(
                self.client, replica_id, incarnation, ttl_ms, chunks
            )
            return [parse_renewals(r) for r in raw]
        script = self.scripts.script("renewLeases")
        scripts = self.scripts

        def builder(group: list[Chunk]) -> Callable[[Pipeline], None]:
            def build(pipe: Pipeline) -> None:
                for part in group:
                    scripts.queue_renew_leases(pipe, replica_id, incarnation, ttl_ms, part)

            return build

        if len(chunks) <= RENEW_PIPELINE_CHUNKS:
            raw = await execute_pipeline(self.client, script, builder(chunks), alone=True)
            return [parse_renewals(r) for r in raw]
        # many leases: several pipelines in flight on their own connections, so Redis runs
        # one while Python encodes the next and parses the last (one pipeline is
        # encode, then execute, then parse: the two processes would take turns)
        groups = [
            chunks[i : i + RENEW_PIPELINE_CHUNKS]
            for i in range(0, len(chunks), RENEW_PIPELINE_CHUNKS)
        ]
        gate = asyncio.Semaphore(RENEW_PIPELINES)

        async def run(group: list[Chunk]) -> list[LeaseRenewals]:
            async with gate:
                raw = await execute_pipeline(self.client, script, builder(group), alone=True)
                return [parse_renewals(r) for r in raw]

        parts = await asyncio.gather(*(run(g) for g in groups))
        return [reply for part in parts for reply in part]

    async def _run_chunks_cluster(
        self,
        client: RedisCluster,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        chunks: list[Chunk],
    ) -> list[object]:
        """One pipeline per node, all nodes at once (redis-py's cluster pipeline routes each
        EVALSHA by its keys' slot). Every chunk holds keys of one slot. A node that does not
        know the script (a promoted replica after failover) answers NOSCRIPT: the script is
        loaded on every primary and those chunks are sent again."""
        script = self.scripts.script("renewLeases")
        calls: list[list[Any]] = []
        for part in chunks:
            keys, args = self.scripts.renew_leases_call(replica_id, incarnation, ttl_ms, part)
            calls.append(["EVALSHA", script.sha, len(keys), *keys, *args])
        results: list[object] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline()
            for i in todo:
                pipe.execute_command(*calls[i])
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                break
            await script.load(client)
            todo = missing
        return results
