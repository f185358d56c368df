"""Typed async facade over the scripts: the only way api/ and runner/ touch Redis leases."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys, validate_id
from streamward.lua.loader import Scripts, execute_pipeline
from streamward.lua.streams import MAIL_MAXLEN, InboxItem, RunState, parse_inbox, parse_run_state

RENEW_CHUNK = 100
# renewals of more than this many chunks go out as several pipelines, up to RENEW_PIPELINES
# of them in flight at once (overlaps Redis's work with the client's)
RENEW_PIPELINE_CHUNKS = 20
RENEW_PIPELINES = 4


@dataclass(frozen=True, slots=True)
class Registration:
    now_ms: int
    previous_incarnation: str


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


@dataclass(frozen=True, slots=True)
class Entry:
    """One transcript entry to ingest; ``data`` is JSON text."""

    seq: int
    type: str
    data: str
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Enqueued:
    run_id: str
    entry_id: str | None
    duplicate: bool
    active_run_id: str
    pending: int
    revived: bool = False  # the session had been retired: keep its other keys (revive)
    # read in the same script call: the log's last entry id before the append ("0-0" when
    # empty), and the session lease holder after it (None when no lease is held)
    log_last_id: str = "0-0"
    holder: tuple[str, str] | None = None  # (replica_id, incarnation)

    @property
    def enqueued_ms(self) -> int | None:
        """Redis time of the append: the ms part of the inbox entry id."""
        return int(self.entry_id.split("-", 1)[0]) if self.entry_id else None


@dataclass(frozen=True, slots=True)
class ForceReleased:
    old_replica_id: str
    old_incarnation: str
    old_token: int
    new_epoch: int


_LOST_REASON = {0: "expired", E.NOT_OWNER: "not_owner", E.STALE_TOKEN: "stale_token"}


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A stream entry's flat [field, value, ...] list (as a script returns it) as a dict."""
    it = iter(_s(x) for x in flat)
    return dict(zip(it, it, strict=True))


def _check(script: str, reply: list[object]) -> list[object]:
    if int(reply[0]) not in (E.OK, E.DUPLICATE):  # type: ignore[call-overload]
        raise E.status_error(script, reply)
    return reply


class LeaseStore:
    """Async, typed calls over one Redis client (standalone, Sentinel master or Cluster)."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.scripts = Scripts(client)
        self.cluster = isinstance(client, RedisCluster)

    # -- replica lease -----------------------------------------------------------------

    async def register_replica(
        self, replica_id: str, incarnation: str, ttl_ms: int, fields: dict[str, str] | None = None
    ) -> Registration:
        rk = self.keys.replica(replica_id)
        args: list[str | int] = [incarnation, ttl_ms]
        for k, v in (fields or {}).items():
            args += [k, v]
        reply = _check("registerReplica", await self.scripts.registerReplica([rk.lease], args))
        await self.client.zadd(self.keys.replicas, {replica_id: int(reply[1])})  # type: ignore[call-overload]
        return Registration(int(reply[1]), _s(reply[2]))  # type: ignore[call-overload]

    async def renew_replica(
        self, replica_id: str, incarnation: str, ttl_ms: int, fields: dict[str, str] | None = None
    ) -> int:
        """Renew the replica lease; return Redis time in ms. Raises ReplicaLost."""
        rk = self.keys.replica(replica_id)
        args: list[str | int] = [incarnation, ttl_ms]
        for k, v in (fields or {}).items():
            args += [k, v]
        reply = await self.scripts.renewReplica([rk.lease], args)
        if int(reply[0]) != E.OK:
            raise E.ReplicaLost(replica_id, _s(reply[1]))
        now = int(reply[1])
        await self.client.zadd(self.keys.replicas, {replica_id: now})
        return now

    async def replica_alive(self, replica_id: str, incarnation: str | None = None) -> bool:
        """Whether the replica lease exists (and names ``incarnation`` when given)."""
        cur = await self.client.hget(self.keys.replica(replica_id).lease, "incarnation")
        if cur is None:
            return False
        return incarnation is None or _s(cur) == incarnation

    # -- session lease -----------------------------------------------------------------

    async def acquire(
        self, session: SessionKeys, replica_id: str, incarnation: str, ttl_ms: int
    ) -> Lease:
        """Acquire (or confirm) a session lease. Raises LeaseHeld with the holder."""
        validate_id("replica_id", replica_id)
        reply = _check(
            "acquireLease",
            await self.scripts.acquireLease(
                [session.lease, session.epoch, session.meta], [replica_id, incarnation, ttl_ms]
            ),
        )
        lease = Lease(session, replica_id, incarnation, int(reply[1]), int(reply[2]), reply[3] == 1)  # type: ignore[call-overload]
        await self.client.sadd(self.keys.replica(replica_id).leases, session.ref)
        return lease

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
        old_replica, old_inc, old_token = expected
        validate_id("replica_id", old_replica)  # before Redis: used for its index afterwards
        reply = _check(
            "takeoverLease",
            await self.scripts.takeoverLease(
                [session.lease, session.epoch, session.meta],
                [old_replica, old_inc, old_token, replica_id, incarnation, ttl_ms],
            ),
        )
        lease = Lease(session, replica_id, incarnation, int(reply[1]), int(reply[2]), reply[3] == 1)  # type: ignore[call-overload]
        await self.client.sadd(self.keys.replica(replica_id).leases, session.ref)
        if lease.fresh and old_replica != replica_id:
            await self.client.srem(self.keys.replica(old_replica).leases, session.ref)
        return lease

    async def renew_many(
        self,
        replica_id: str,
        incarnation: str,
        leases: Sequence[tuple[SessionKeys, int]],
        ttl_ms: int,
        chunk: int = RENEW_CHUNK,
    ) -> RenewResult:
        """Renew many leases: one script call per chunk (grouped by slot), all pipelined."""
        groups: dict[int, list[tuple[SessionKeys, int]]] = defaultdict(list)
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
            now = max(now, int(reply[0]))
            for (sk, _), r in zip(part, reply[1:], strict=True):
                if int(r) == E.OK:
                    renewed.append(sk)
                else:
                    lost.append((sk, _LOST_REASON.get(int(r), "unknown")))
        if lost:
            await self.client.srem(
                self.keys.replica(replica_id).leases, *[sk.ref for sk, _ in lost]
            )
        return RenewResult(now, renewed, lost)

    async def _run_chunks(
        self,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        chunks: list[list[tuple[SessionKeys, int]]],
    ) -> list[list[int]]:
        script = self.scripts.renewLeases
        if isinstance(self.client, RedisCluster):
            return await self._run_chunks_cluster(
                self.client, replica_id, incarnation, ttl_ms, chunks
            )

        def builder(group: list[list[tuple[SessionKeys, int]]]) -> Callable[[Pipeline], None]:
            def build(pipe: Pipeline) -> None:
                for part in group:
                    script.queue(
                        pipe,
                        [sk.lease for sk, _ in part],
                        [replica_id, incarnation, ttl_ms, *[str(t) for _, t in part]],
                    )

            return build

        if len(chunks) <= RENEW_PIPELINE_CHUNKS:
            return await execute_pipeline(self.client, script, builder(chunks))
        # many leases: several pipelines in flight on their own connections, so Redis runs
        # one while Python encodes the next and parses the last (one pipeline is
        # encode, then execute, then parse: the two processes would take turns)
        groups = [
            chunks[i : i + RENEW_PIPELINE_CHUNKS]
            for i in range(0, len(chunks), RENEW_PIPELINE_CHUNKS)
        ]
        gate = asyncio.Semaphore(RENEW_PIPELINES)

        async def run(group: list[list[tuple[SessionKeys, int]]]) -> list[list[int]]:
            async with gate:
                return await execute_pipeline(self.client, script, builder(group))

        parts = await asyncio.gather(*(run(g) for g in groups))
        return [reply for part in parts for reply in part]

    async def _run_chunks_cluster(
        self,
        client: RedisCluster,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        chunks: list[list[tuple[SessionKeys, int]]],
    ) -> list[list[int]]:
        """One pipeline per node, all nodes at once (redis-py's cluster pipeline routes each
        EVALSHA by its keys' slot). Every chunk holds keys of one slot. A node that does not
        know the script (a promoted replica after failover) answers NOSCRIPT: the script is
        loaded on every primary and those chunks are sent again."""
        script = self.scripts.renewLeases
        calls: list[list[str | int]] = [
            [
                "EVALSHA",
                script.sha,
                len(part),
                *[sk.lease for sk, _ in part],
                replica_id,
                incarnation,
                ttl_ms,
                *[str(t) for _, t in part],
            ]
            for part in chunks
        ]
        results: list[Any] = [None] * len(calls)
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

    async def release(
        self, session: SessionKeys, replica_id: str, incarnation: str, token: int
    ) -> bool:
        """Owner-checked release. True if released, False if no lease was held; NotOwner else."""
        reply = await self.scripts.releaseLease([session.lease], [replica_id, incarnation, token])
        await self.client.srem(self.keys.replica(replica_id).leases, session.ref)
        code = int(reply[0])
        if code == E.OK:
            return True
        if code == E.NOT_FOUND:
            return False
        raise E.status_error("releaseLease", reply)

    async def force_release(self, session: SessionKeys, reason: str = "manual") -> ForceReleased:
        """Break-glass: delete the lease whoever holds it and bump the epoch (fences the owner)."""
        reply = _check(
            "forceRelease",
            await self.scripts.forceRelease([session.lease, session.epoch, session.meta], [reason]),
        )
        out = ForceReleased(_s(reply[1]), _s(reply[2]), int(reply[3]), int(reply[4]))  # type: ignore[call-overload]
        if out.old_replica_id:
            await self.client.srem(self.keys.replica(out.old_replica_id).leases, session.ref)
        return out

    async def ownership(self, session: SessionKeys) -> Ownership:
        """Lease fields + whether the holder's replica lease is alive + TTLs."""
        reply = await self.scripts.readLease([session.lease, session.epoch], [])
        if int(reply[0]) == E.NOT_FOUND:
            return Ownership(session.project, session.session_id, held=False, epoch=int(reply[1]))
        replica_id, incarnation = _s(reply[1]), _s(reply[2])
        rk = self.keys.replica(replica_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(rk.lease, "incarnation")
        pipe.pttl(rk.lease)
        cur, rttl = await pipe.execute()
        alive = cur is not None and _s(cur) == incarnation
        return Ownership(
            session.project,
            session.session_id,
            held=True,
            epoch=int(reply[7]),
            replica_id=replica_id,
            incarnation=incarnation,
            token=int(reply[3]),
            acquired_ms=int(reply[4]),
            renewed_ms=int(reply[5]),
            lease_ttl_ms=int(reply[6]),
            replica_alive=alive,
            replica_ttl_ms=int(rttl) if alive and int(rttl) >= 0 else None,
        )

    # -- transcript and inbox ----------------------------------------------------------

    async def ingest(
        self,
        session: SessionKeys,
        run_id: str,
        token: int,
        entries: Iterable[Entry],
        *,
        replica_id: str | None = None,
        incarnation: str | None = None,
    ) -> IngestResult:
        """Fenced, idempotent append. Raises StaleToken, NotOwner (the lease does not name
        ``replica_id``/``incarnation``, when given) or SeqGap; nothing is written then."""
        owner = f"{replica_id}|{incarnation}|{token}" if replica_id and incarnation else ""
        args: list[str | int] = [token, run_id, 0, owner]
        n = 0
        for e in entries:
            args += [e.seq, e.type, e.data, "" if e.ts_ms is None else e.ts_ms]
            n += 1
        args[2] = n
        reply = await self.scripts.ingestEntries(
            [session.epoch, session.log, session.meta, session.runs, session.lease], args
        )
        code = int(reply[0])
        if code == E.STALE_TOKEN:
            raise E.StaleToken(token, int(reply[1]))
        _check("ingestEntries", reply)
        return IngestResult(int(reply[1]), int(reply[2]), int(reply[3]))

    async def enqueue(
        self,
        session: SessionKeys,
        run_id: str,
        input_json: str,
        *,
        multitask: str = "enqueue",
        idempotency_key: str | None = None,
        idempotency_ttl_ms: int = 24 * 3600 * 1000,
        source: str = "invoke",
    ) -> Enqueued:
        """Append an invocation to the inbox. Raises SessionBusy for multitask=reject."""
        idem = session.idempotency(idempotency_key or "-")
        reply = _check(
            "enqueueInput",
            await self.scripts.enqueueInput(
                [session.inbox, session.meta, idem, session.log, session.lease],
                [
                    run_id,
                    input_json,
                    multitask,
                    "1" if idempotency_key else "0",
                    idempotency_ttl_ms,
                    session.project,
                    session.session_id,
                    source,
                ],
            ),
        )
        if int(reply[0]) == E.DUPLICATE:  # type: ignore[call-overload]
            return Enqueued(_s(reply[1]), None, True, "", 0, log_last_id=_s(reply[2]))
        holder = _s(reply[6])
        return Enqueued(
            run_id,
            _s(reply[1]),
            False,
            _s(reply[2]),
            int(reply[3]),  # type: ignore[call-overload]
            revived=int(reply[4]) == 1,  # type: ignore[call-overload]
            log_last_id=_s(reply[5]),
            holder=(holder, _s(reply[7])) if holder else None,
        )

    async def notify_replica(
        self,
        replica_id: str,
        incarnation: str,
        kind: str,
        session_ref: str,
        run_id: str = "",
        *,
        touch: tuple[str, int] | None = None,
    ) -> bool:
        """Mail ``replica_id`` iff its replica lease names ``incarnation``; False (and nothing
        written) when it is dead or re-registered.

        ``touch`` = (session ref, ms): also score the session in ``sw:sessions``, in the same
        round trip (pipelined; on Cluster, concurrently: another slot).
        """
        rk = self.keys.replica(replica_id)
        script = self.scripts.notifyReplica
        keys = [rk.lease, rk.mail]
        args: list[str | int] = [incarnation, kind, session_ref, run_id, MAIL_MAXLEN]
        if touch is None:
            reply = await script(keys, args)
        elif self.cluster:
            reply, _ = await asyncio.gather(
                script(keys, args), self.client.zadd(self.keys.sessions, {touch[0]: touch[1]})
            )
        else:
            sessions = self.keys.sessions

            def build(pipe: Pipeline) -> None:
                script.queue(pipe, keys, args)
                pipe.zadd(sessions, {touch[0]: touch[1]})

            reply = (await execute_pipeline(self.client, script, build))[0]
        return int(reply[0]) == E.OK

    async def peek_inbox(
        self, session: SessionKeys, count: int
    ) -> tuple[list[InboxItem], RunState | None, bool]:
        """The oldest ``count`` pending inputs, the first one's run state and whether its
        cancellation was requested: one round trip (read-only)."""
        reply = await self.scripts.peekInbox(
            [session.inbox, session.runs, session.cancels], [count]
        )
        items = [parse_inbox(_s(i), _pairs(f)) for i, f in reply[1]]
        if not items:
            return items, None, False
        raw = reply[2]
        state = parse_run_state(items[0].run_id, raw) if raw else None
        return items, state, int(reply[3]) == 1

    async def complete_input(self, session: SessionKeys, token: int, entry_id: str) -> int:
        """Fenced: mark an inbox entry consumed. Returns pending count. Raises StaleToken."""
        reply = await self.scripts.completeInput(
            [session.epoch, session.inbox, session.meta], [token, entry_id]
        )
        if int(reply[0]) == E.STALE_TOKEN:
            raise E.StaleToken(token, int(reply[1]))
        return int(reply[1])

    async def claim_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend a named lock (watchdog election)."""
        reply = await self.scripts.claimLock([key], [owner, ttl_ms])
        return int(reply[0]) == E.OK
