"""Typed async facade over the scripts: the only way api/ and runner/ touch Redis leases.

``LeaseStore`` = the lease calls of lua/leases.py plus the transcript and inbox calls here;
every script runs through its typed method in lua/scripts.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from streamward.lua.client import RedisClient
from streamward.lua.entries import Entry as Entry  # re-exported: callers built entries from here
from streamward.lua.errors import StreamwardError
from streamward.lua.indexes import queue_touch
from streamward.lua.keys import DEFAULT_TYPE, Keys, SessionKeys
from streamward.lua.leases import LeaseCalls
from streamward.lua.loader import Script, execute_pipeline
from streamward.lua.replies import DuplicateInput, InboxPeek, IngestResult, LockClaim
from streamward.lua.scripts import Advance as Advance  # re-exported for the API
from streamward.lua.scripts import Announce, parse_notified
from streamward.lua.scripts import IngestCall as IngestCall  # re-exported for the API
from streamward.lua.sessionmeta import Created, Updated, create_session, update_session
from streamward.lua.work import MAIL_MAXLEN

# sessions whose last seen holder an API process remembers (enqueue's predict_mail)
HOLDERS_REMEMBERED = 50_000


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
    session_type: str = DEFAULT_TYPE  # the session's type ("" for a duplicate: not read)
    created: bool = False  # this append created the session (new meta; revived is apart)
    # the predicted holder mailed in the append's round trip (enqueue's ``mail``), when its
    # replica lease named it: the caller's wake-up is done
    mailed: tuple[str, str] | None = None

    @property
    def enqueued_ms(self) -> int | None:
        """Redis time of the append: the ms part of the inbox entry id."""
        return int(self.entry_id.split("-", 1)[0]) if self.entry_id else None


class LeaseStore(LeaseCalls):
    """Async, typed calls over one Redis client (standalone, Sentinel master or Cluster)."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        # session ref -> the lease holder its last append saw (enqueue's predict_mail)
        self._holders: dict[str, tuple[str, str]] = {}

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
        advance: Advance | None = None,
    ) -> IngestResult:
        """Fenced, idempotent append. Raises StaleToken, NotOwner (the lease does not name
        ``replica_id``/``incarnation``, when given) or SeqGap; nothing is written then.
        ``advance`` (inbox entry id, inputs to peek, announce): after the append, that input
        is consumed and the next peeked, as ``advance_inbox`` (the reply's ``peek``)."""
        owner = f"{replica_id}|{incarnation}|{token}" if replica_id and incarnation else ""
        call = (session, token, run_id, owner, list(entries))
        if advance is not None:
            return await self.scripts.ingest_advance(call, advance)
        return await self.scripts.ingest_entries(*call)

    async def ingest_many(
        self, calls: Sequence[IngestCall], advances: Sequence[Advance | None] | None = None
    ) -> list[IngestResult | StreamwardError]:
        """``ingest`` for several sessions in one round trip (``calls``: session, token,
        run_id, owner signature or "", entries; ``advances``: each one's ``advance``); a
        refused call's error is in its place."""
        return await self.scripts.ingest_many(calls, advances)

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
        session_type: str = "",
        default_type: str = DEFAULT_TYPE,
        max_pending: int = 0,
        may_create: bool = True,
        indexed: bool = False,
        predict_mail: bool = False,
        traceparent: str = "",
        starts_to: str = "",
    ) -> Enqueued:
        """Append an invocation to the inbox. Raises SessionBusy for multitask=reject, and
        TypeMismatch when ``session_type`` (the type the caller names; "" = none) is not the
        session's. A new session gets ``session_type``, else ``default_type``.

        Quotas, checked before anything is written: InboxFull when the inbox holds
        ``max_pending`` inputs (0 = no limit), SessionLimit when the session is new or
        retired and ``may_create`` is False (the project is at its live-sessions limit).

        The session is added to the pending index (``sw:pending``) first, in the same round
        trip: whatever happens to the wake-up that follows, the watchdog's sweep finds the
        input. The score is this host's clock (ms): the sweep leaves entries younger than
        its grace alone, so hosts need clocks within the sweep interval of Redis's.
        ``indexed``: the caller did that already (``index_pending``, overlapped with its own
        call on Cluster, where the ZADD is a round trip of its own). ``traceparent``: the
        trace context the run continues (docs/operations.md, "Tracing"), kept in the entry;
        ``starts_to``: the channel of the API process waiting for the run's start, kept in the
        entry too (the owner publishes the start there: api/startfeed.py).
        """
        now_ms = int(time.time() * 1000)
        then = None
        then_replies: list[object] = []
        mail = self._holders.get(session.ref) if predict_mail and not self.cluster else None
        if mail is not None:
            # the holder seen by this session's last append, mailed in the same round trip
            # (after the append: the mail never precedes its input). A wrong guess writes
            # nothing (the replica lease must name it); a spare mail, for an input refused
            # or a duplicate, costs the owner one idle inbox read
            call = (
                self.keys.replica(mail[0]), mail[1], "input", session.ref, "", MAIL_MAXLEN,
                multitask,
            )  # fmt: skip
            notify = self.scripts.script("notifyReplica")

            def then(pipe: Pipeline) -> list[Script]:
                keys, args = self.scripts.notify_replica_call(*call)
                notify.queue(pipe, keys, args)
                # host time for the index score (the append's Redis time is not known yet);
                # XX: only a session still indexed is touched, so an invoke refused for a
                # deleted session cannot bring it back into the listings
                queue_touch(pipe, self.keys, session, now_ms, existing_only=True)
                return [notify]

        r = await self.scripts.enqueue_input(
            session,
            run_id,
            input_json,
            multitask=multitask,
            idempotency_key=idempotency_key,
            idempotency_ttl_ms=idempotency_ttl_ms,
            source=source,
            pending=None if indexed else (self.keys.pending, now_ms),
            session_type=session_type,
            default_type=default_type,
            max_pending=max_pending,
            may_create=may_create,
            then=then,
            then_replies=then_replies,
            traceparent=traceparent,
            starts_to=starts_to,
        )
        mailed = None
        if then_replies and not isinstance(then_replies[0], Exception):
            mailed = mail if parse_notified(then_replies[0]) else None
        if predict_mail and not isinstance(r, DuplicateInput):
            self._remember_holder(session, r.holder)
        elif predict_mail:
            self._holders.pop(session.ref, None)
        if isinstance(r, DuplicateInput):
            return Enqueued(
                r.run_id,
                None,
                True,
                "",
                0,
                log_last_id=r.log_last_id,
                session_type="",
                mailed=mailed,
            )
        return Enqueued(
            run_id,
            r.entry_id,
            False,
            r.active_run_id,
            r.pending,
            revived=r.revived,
            log_last_id=r.log_last_id,
            holder=r.holder,
            session_type=r.session_type,
            created=r.created,
            mailed=mailed,
        )

    def _remember_holder(self, session: SessionKeys, holder: tuple[str, str] | None) -> None:
        if holder is None:
            self._holders.pop(session.ref, None)
            return
        if len(self._holders) >= HOLDERS_REMEMBERED and session.ref not in self._holders:
            self._holders.clear()  # a bounded guess, not a record: start over
        self._holders[session.ref] = holder

    async def index_pending(self, session: SessionKeys) -> None:
        """The pending-index ZADD ``enqueue`` makes first, on its own (see ``indexed``)."""
        await self.client.zadd(self.keys.pending, {session.ref: int(time.time() * 1000)})

    async def notify_replica(
        self,
        replica_id: str,
        incarnation: str,
        kind: str,
        session_ref: str,
        run_id: str = "",
        *,
        touch: tuple[SessionKeys, int] | None = None,
        multitask: str = "",
    ) -> bool:
        """Mail ``replica_id`` iff its replica lease names ``incarnation``; False (and nothing
        written) when it is dead or re-registered. ``multitask``: an input mail's mode
        (runner/control.py: an owner looks for an interrupting input only when it may be one).

        ``touch`` = (session, ms): also record the session's activity in its indexes
        (``indexes.queue_touch``), in the same round trip (pipelined; on Cluster,
        concurrently: other slots).
        """
        rk = self.keys.replica(replica_id)
        call = (rk, incarnation, kind, session_ref, run_id, MAIL_MAXLEN, multitask)
        if touch is None:
            return await self.scripts.notify_replica(*call)
        if self.cluster:
            index = self.client.pipeline(transaction=False)
            queue_touch(index, self.keys, touch[0], touch[1])
            delivered, _ = await asyncio.gather(self.scripts.notify_replica(*call), index.execute())
            return bool(delivered)
        script = self.scripts.script("notifyReplica")
        keys, args = self.scripts.notify_replica_call(*call)

        def build(pipe: Pipeline) -> None:
            script.queue(pipe, keys, args)
            queue_touch(pipe, self.keys, touch[0], touch[1])

        return parse_notified((await execute_pipeline(self.client, script, build))[0])

    async def peek_inbox(
        self,
        session: SessionKeys,
        count: int,
        *,
        with_head: bool = True,
        token: int = 0,
        announce: Announce | None = None,
    ) -> InboxPeek:
        """The oldest ``count`` pending inputs' ids, run ids and multitask modes, the first
        one's input (unparsed; only ``with_head``), its run state and whether its
        cancellation was requested: one round trip. With the owner's ``token`` (fenced) it
        also records that this owner took the head and answers how many owners did, and with
        ``announce`` publishes a runnable head's start notice (``Scripts.peek_inbox``)."""
        return await self.scripts.peek_inbox(
            session, count, with_head=with_head, token=token, announce=announce
        )

    async def advance_inbox(
        self,
        session: SessionKeys,
        token: int,
        entry_id: str,
        count: int,
        announce: Announce | None = None,
    ) -> InboxPeek:
        """Fenced: ``complete_input`` of ``entry_id``, then ``peek_inbox`` (head in full, its
        take recorded under ``token``, ``announce`` as there), in one round trip. Raises
        StaleToken."""
        return await self.scripts.advance_inbox(session, token, entry_id, count, announce)

    async def complete_input(self, session: SessionKeys, token: int, entry_id: str) -> int:
        """Fenced: mark an inbox entry consumed. Returns pending count. Raises StaleToken."""
        return await self.scripts.complete_input(session, token, entry_id)

    async def save_state(self, session: SessionKeys, owner: tuple[str, str, int], data: str) -> int:
        """Fenced: store a session host's snapshot as ``owner`` (replica id, incarnation,
        token); returns the saved time (Redis ms). Raises StaleToken or NotOwner."""
        replica_id, incarnation, token = owner
        signature = f"{replica_id}|{incarnation}|{token}"
        return await self.scripts.save_state(session, token, signature, data)

    async def claim_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend a named lock (watchdog election)."""
        claim: LockClaim = await self.scripts.claim_lock(key, owner, ttl_ms)
        return claim.held

    # -- the session resource (POST / PATCH /v1/sessions) ---------------------------------

    async def create_session(
        self,
        session: SessionKeys,
        *,
        title: str,
        metadata_json: str,
        session_type: str,
        status: str,
        create_key: str = "",
    ) -> Created:
        """Create the session's meta atomically (createSession-2); ``created`` False when a
        live session has the id (``same_key``: it was created with ``create_key``)."""
        return await create_session(
            self.scripts,
            session,
            title=title,
            metadata_json=metadata_json,
            session_type=session_type,
            status_name=status,
            create_key=create_key,
        )

    async def update_session(
        self,
        session: SessionKeys,
        *,
        expected_metadata: str,
        metadata_json: str,
        title: str | bool | None,
        entry_json: str,
    ) -> Updated | None:
        """Compare-and-set the metadata (and title: False = keep, None = delete) and write the
        ``session.updated`` entry when no lease is held (updateSession-4). None: no session."""
        mode = "keep" if title is False else "delete" if title is None else "set"
        return await update_session(
            self.scripts,
            session,
            expected_metadata=expected_metadata,
            metadata_json=metadata_json,
            title_mode=mode,
            title=title if isinstance(title, str) else "",
            entry_json=entry_json,
        )
