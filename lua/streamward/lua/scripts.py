"""One typed method per Lua script (like BullMQ's ``scripts.ts``): typed arguments in, a parsed
reply (lua/replies.py) or a StreamwardError out. The only code that builds KEYS / ARGV or reads
a raw reply; ``LeaseStore``, ``Streams`` and ``RouteStore`` call these.

Error statuses the callers never handle themselves become exceptions here, through
``errors.status_error`` (the one status → exception map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.inboxscripts import Announce as Announce  # re-exported
from streamward.lua.inboxscripts import InboxScripts
from streamward.lua.ingestscripts import Advance as Advance  # re-exported
from streamward.lua.ingestscripts import IngestCall as IngestCall  # re-exported
from streamward.lua.ingestscripts import IngestScripts
from streamward.lua.keys import DEFAULT_TYPE, ReplicaKeys, SessionKeys
from streamward.lua.loader import ArgT, Script, execute_pipeline, run_then, script_sources
from streamward.lua.replies import (
    Binding,
    DuplicateInput,
    ForceReleased,
    Grant,
    LeaseRecord,
    LockClaim,
    NoLease,
    Queued,
    Registration,
    as_int,
    as_list,
    as_str,
    status,
)
from streamward.lua.replies import ok_reply as _ok
from streamward.lua.replies import (  # re-exported: pipelined callers parse with these
    parse_enqueued as parse_enqueued,
)
from streamward.lua.replies import (
    parse_grant as parse_grant,
)
from streamward.lua.replies import (
    parse_notified as parse_notified,
)
from streamward.lua.replies import (
    parse_renewals as parse_renewals,
)
from streamward.lua.scriptnames import SCRIPT_NAMES as SCRIPT_NAMES
from streamward.lua.scriptnames import ScriptName as ScriptName

_BIND_ACTIONS: dict[str, Literal["started", "queued", "due"]] = {
    "started": "started",
    "queued": "queued",
    "due": "due",
}


def _field_args(incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None) -> list[ArgT]:
    args: list[ArgT] = [incarnation, ttl_ms]
    for k, v in (fields or {}).items():
        args += [k, v]
    return args


class Scripts(IngestScripts, InboxScripts):
    """Every script for one client, each behind its typed method (the transcript's in the
    ``IngestScripts`` mixin, the owner's inbox calls in ``InboxScripts``)."""

    def __init__(self, client: RedisClient) -> None:
        sources = script_sources()
        if set(sources) != set(SCRIPT_NAMES):
            raise E.ScriptError(f"scripts shipped {sorted(sources)} != typed {SCRIPT_NAMES}")
        self._by_name = {name: Script(sources[name], client) for name in SCRIPT_NAMES}
        self._client = client
        self._cluster = isinstance(client, RedisCluster)

    def script(self, name: ScriptName) -> Script:
        """The loaded script itself (its SHA, ``queue`` for pipelines, raw calls in tests)."""
        return self._by_name[name]

    def all(self) -> list[Script]:
        return list(self._by_name.values())

    async def load_all(self, client: RedisClient) -> None:
        """SCRIPT LOAD every script now (readiness), so the first real call is an EVALSHA hit."""
        for s in self._by_name.values():
            await s.load(client)

    # -- replica lease -------------------------------------------------------------------

    async def register_replica(
        self, replica: ReplicaKeys, incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None
    ) -> Registration:
        raw = await self._by_name["registerReplica"](
            [replica.lease], _field_args(incarnation, ttl_ms, fields)
        )
        r = _ok("registerReplica", as_list(raw))
        return Registration(as_int(r[1]), as_str(r[2]))

    async def renew_replica(
        self, replica: ReplicaKeys, incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None
    ) -> int:
        """Redis time in ms; raises ReplicaLost (naming the incarnation now registered)."""
        raw = await self._by_name["renewReplica"](
            [replica.lease], _field_args(incarnation, ttl_ms, fields)
        )
        r = as_list(raw)
        if status(r) == E.REPLICA_LOST:
            raise E.ReplicaLost(replica.replica_id, as_str(r[1]))
        return as_int(_ok("renewReplica", r)[1])

    # -- session lease -------------------------------------------------------------------

    async def acquire_lease(
        self, session: SessionKeys, replica_id: str, incarnation: str, ttl_ms: int
    ) -> Grant:
        """Raises LeaseHeld with the holder."""
        raw = await self._by_name["acquireLease"](
            *self.acquire_lease_call(session, replica_id, incarnation, ttl_ms)
        )
        return parse_grant("acquireLease", raw)

    @staticmethod
    def acquire_lease_call(
        session: SessionKeys, replica_id: str, incarnation: str, ttl_ms: int
    ) -> tuple[list[str], list[ArgT]]:
        """(KEYS, ARGV) of acquireLease, for callers that pipeline it (parse with parse_grant)."""
        return [session.lease, session.epoch, session.meta, session.history], [
            replica_id,
            incarnation,
            ttl_ms,
        ]

    async def takeover_lease(
        self,
        session: SessionKeys,
        expected: tuple[str, str, int],
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
    ) -> Grant:
        """CAS from ``expected`` = (replica, incarnation, token); raises LeaseHeld."""
        old_replica, old_inc, old_token = expected
        raw = await self._by_name["takeoverLease"](
            [session.lease, session.epoch, session.meta, session.history],
            [old_replica, old_inc, old_token, replica_id, incarnation, ttl_ms],
        )
        return parse_grant("takeoverLease", raw)

    @staticmethod
    def renew_leases_call(
        replica_id: str, incarnation: str, ttl_ms: int, leases: Sequence[tuple[SessionKeys, int]]
    ) -> tuple[list[str], list[ArgT]]:
        """(KEYS, ARGV) of one renewLeases chunk (pipelined; parse with parse_renewals)."""
        args: list[ArgT] = [replica_id, incarnation, ttl_ms, *[str(t) for _, t in leases]]
        return [sk.lease for sk, _ in leases], args

    def queue_renew_leases(
        self,
        pipe: Pipeline,
        replica_id: str,
        incarnation: str,
        ttl_ms: int,
        leases: Sequence[tuple[SessionKeys, int]],
    ) -> None:
        keys, args = self.renew_leases_call(replica_id, incarnation, ttl_ms, leases)
        self._by_name["renewLeases"].queue(pipe, keys, args)

    async def release_lease(
        self, session: SessionKeys, replica_id: str, incarnation: str, token: int, reason: str
    ) -> bool:
        """True when released, False when no lease was held; raises NotOwner."""
        raw = await self._by_name["releaseLease"](
            [session.lease, session.history], [replica_id, incarnation, token, reason]
        )
        r = _ok("releaseLease", as_list(raw), E.NOT_FOUND)
        return status(r) == E.OK

    async def force_release(
        self, session: SessionKeys, reason: str, kind: str = "force"
    ) -> ForceReleased:
        """``kind``: force (an operator) or deleted (session deletion); both are recorded."""
        raw = await self._by_name["forceRelease"](
            [session.lease, session.epoch, session.meta, session.history], [reason, kind]
        )
        r = _ok("forceRelease", as_list(raw))
        return ForceReleased(as_str(r[1]), as_str(r[2]), as_int(r[3]), as_int(r[4]))

    async def read_lease(self, session: SessionKeys) -> LeaseRecord | NoLease:
        raw = await self._by_name["readLease"]([session.lease, session.epoch], [])
        r = _ok("readLease", as_list(raw), E.NOT_FOUND)
        if status(r) == E.NOT_FOUND:
            return NoLease(as_int(r[1]))
        return LeaseRecord(
            replica_id=as_str(r[1]),
            incarnation=as_str(r[2]),
            token=as_int(r[3]),
            acquired_ms=as_int(r[4]),
            renewed_ms=as_int(r[5]),
            pttl_ms=as_int(r[6]),
            epoch=as_int(r[7]),
        )

    async def claim_lock(
        self, key: str, owner: str, ttl_ms: int, client: RedisClient | None = None
    ) -> LockClaim:
        raw = await self._by_name["claimLock"]([key], [owner, ttl_ms], client)
        r = as_list(raw)
        if status(r) == E.OK:
            return LockClaim(True)
        return LockClaim(False, as_str(r[1]), as_int(r[2]))

    # -- transcript and inbox ------------------------------------------------------------

    async def enqueue_input(
        self,
        session: SessionKeys,
        run_id: str,
        input_json: str,
        *,
        multitask: str,
        idempotency_key: str | None,
        idempotency_ttl_ms: int,
        source: str,
        pending: tuple[str, int] | None = None,
        session_type: str = "",
        default_type: str = DEFAULT_TYPE,
        max_pending: int = 0,
        may_create: bool = True,
        then: Callable[[Pipeline], Sequence[Script]] | None = None,
        then_replies: list[Any] | None = None,
        traceparent: str = "",
        starts_to: str = "",
    ) -> Queued | DuplicateInput:
        """Raises SessionBusy (multitask=reject), TypeMismatch (``session_type`` names another
        type; a new session gets it, else ``default_type``), InboxFull at ``max_pending``
        inputs (0 = none), SessionLimit (new or retired, not ``may_create``): nothing written.

        ``pending`` = (pending index key, score ms): ZADD the session there BEFORE the
        append, in the same pipeline (one round trip); on Cluster (another slot) the ZADD
        is awaited first. An entry whose append was refused is pruned by the sweep.
        ``traceparent``: the W3C trace context stored with the entry (its ``trace`` field);
        ``starts_to``: the channel of the API process waiting for the run's start (its
        ``starts_to`` field: the owner publishes the start there, api/startfeed.py).
        """
        idem = session.idempotency(idempotency_key or "-")
        keys = [session.inbox, session.meta, idem, session.log, session.lease]
        args: list[ArgT] = [run_id, input_json, multitask, "1" if idempotency_key else "0"]
        args += [idempotency_ttl_ms, session.project, session.session_id, source, session_type]
        args += [default_type, max_pending, "1" if may_create else "0", traceparent, starts_to]
        script = self._by_name["enqueueInput"]
        if then is not None and not self._cluster:
            # commands that follow the append in the same round trip (the predicted owner's
            # mail, see LeaseStore.enqueue); their replies (or errors) go to ``then_replies``
            zadd = None if pending is None else (pending[0], {session.ref: pending[1]})
            reply, rest = await run_then(self._client, zadd, script, keys, args, then)
            if then_replies is not None:
                then_replies.extend(rest)
            return parse_enqueued(reply)
        if pending is None:
            return parse_enqueued(await script(keys, args))
        index, score_ms = pending
        if self._cluster:
            await self._client.zadd(index, {session.ref: score_ms})
            return parse_enqueued(await script(keys, args))

        def build(pipe: Pipeline) -> None:
            pipe.zadd(index, {session.ref: score_ms})
            script.queue(pipe, keys, args)

        # execute raises the first refused command: an error never passes for a reply
        return parse_enqueued((await execute_pipeline(self._client, script, build))[1])

    @staticmethod
    def notify_replica_call(
        replica: ReplicaKeys,
        incarnation: str,
        kind: str,
        session_ref: str,
        run_id: str,
        maxlen: int,
        multitask: str = "",
    ) -> tuple[list[str], list[ArgT]]:
        """(KEYS, ARGV) of notifyReplica (pipelined; parse with parse_notified).
        ``multitask``: an input's mode, named in the mail (the owner skips its look for an
        interrupting input for modes that never interrupt)."""
        args: list[ArgT] = [incarnation, kind, session_ref, run_id, maxlen, multitask]
        return [replica.lease, replica.mail], args

    async def notify_replica(
        self,
        replica: ReplicaKeys,
        incarnation: str,
        kind: str,
        session_ref: str,
        run_id: str,
        maxlen: int,
        multitask: str = "",
    ) -> bool:
        """Delivered, or False (nothing written) when the replica lease names another."""
        keys, args = self.notify_replica_call(
            replica, incarnation, kind, session_ref, run_id, maxlen, multitask
        )
        return parse_notified(await self._by_name["notifyReplica"](keys, args))

    async def save_state(self, sk: SessionKeys, token: int, owner: str, data: str) -> int:
        """Fenced snapshot write (saveState-3): the saved time, Redis ms. Raises StaleToken or
        NotOwner (nothing written then). ``owner`` is ``replica|incarnation|token``."""
        raw = await self._by_name["saveState"]([sk.epoch, sk.state, sk.lease], [token, owner, data])
        return as_int(_ok("saveState", as_list(raw))[1])

    # -- pending index -------------------------------------------------------------------

    async def prune_pending(self, pending_key: str, seen: Sequence[tuple[str, int]]) -> int:
        """Remove each (ref, score read) whose score is still at most that; count removed."""
        if not seen:
            return 0
        args: list[ArgT] = []
        for ref, score in seen:
            args += [ref, score]
        raw = await self._by_name["prunePending"]([pending_key], args)
        return as_int(_ok("prunePending", as_list(raw))[1])

    # -- event routing -------------------------------------------------------------------

    async def bind_session(
        self,
        binding_key: str,
        session_prefix: str,
        *,
        session_timeout_ms: int,
        daily_reset_hour: int | None,
        clock_offset_ms: int,
        key: str,
        reset_reason: str,
        idle_timeout_ms: int = 0,
        mode: Literal["event", "rotate", "clear"] = "event",
        expected_session_id: str = "",
    ) -> Binding:
        hour = -1 if daily_reset_hour is None else daily_reset_hour
        args: list[ArgT] = [session_prefix, session_timeout_ms, hour, clock_offset_ms, key]
        args += [reset_reason, idle_timeout_ms, mode, expected_session_id]
        r = _ok("bindSession", as_list(await self._by_name["bindSession"]([binding_key], args)))
        action = _BIND_ACTIONS.get(as_str(r[3]))
        if action is None:
            raise E.ScriptError(f"bindSession returned action {r[3]!r}")
        return Binding(as_str(r[1]), as_int(r[2]), action, as_str(r[4]), as_str(r[5]))
