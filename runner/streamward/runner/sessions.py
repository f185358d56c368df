"""The replica's session book: which sessions it owns, claiming one, handing work back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from streamward.lua.errors import LeaseHeld
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.leases import Lease
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.actor import SessionActor
from streamward.runner.admission import Evictable, busy_count, make_room
from streamward.runner.archive_reads import ApiTranscript
from streamward.runner.config import RunnerSettings
from streamward.runner.lifecycle import Activation, HandlerSpec, HostFactory, host_factory
from streamward.runner.metrics import Metrics
from streamward.runner.shipper import HttpPoster, Shipper, ShipRejected, ShipStopped
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner")


@dataclass
class _ClaimSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionBook:
    """The session actors of one replica; it is the ``ActorHost`` every actor reports to."""

    def __init__(
        self,
        state: ReplicaState,
        settings: RunnerSettings,
        keys: Keys,
        store: LeaseStore,
        streams: Streams,
        http: HttpPoster,
        metrics: Metrics,
        handler: HandlerSpec | Mapping[str, HandlerSpec],
    ) -> None:
        self.state = state
        self.settings = settings
        self.keys = keys
        self.store = store
        self.streams = streams
        self.http = http
        # a handler's transcript below the hot tail: asked of the API, never of PostgreSQL
        self.transcripts = ApiTranscript(http, settings.api_url, settings.admin_token)
        self.metrics = metrics
        # session type -> host factory: the types this replica serves (one handler = the
        # default type); each activation makes a host of its session's type's factory
        specs = handler if isinstance(handler, Mapping) else {settings.default_type: handler}
        self.factories = {t: host_factory(spec) for t, spec in specs.items()}
        self.types = tuple(sorted(self.factories))
        self.actors: dict[str, SessionActor] = {}
        self.orphans: set[str] = set()  # sessions dropped by a fence, re-queued on re-register
        self._claim_locks: dict[str, _ClaimSlot] = {}
        self._admitting = 0  # claims that made room and are acquiring their lease

    @property
    def replica_id(self) -> str:
        return self.state.replica_id

    @property
    def incarnation(self) -> str:
        return self.state.incarnation

    def capacity(self) -> int:
        """Free slots: idle sessions (waiting out close_delay) count as free, since
        admitting work when full evicts the longest-idle one (``admission``)."""
        busy = busy_count(self.actors.values())
        return self.settings.max_sessions - busy - self._admitting

    def hands_back(self) -> bool:
        """The one rule for "hand the work back instead of claiming": draining, fenced or
        past the self-fencing deadline, Redis refusing writes, or ``max_sessions`` busy
        sessions already. Checked by ``claim`` once the session is known not to be ours."""
        st = self.state
        return st.draining or not st.can_write() or st.writes_refused() or self.capacity() <= 0

    async def writable(self) -> None:
        """Return once Redis accepts writes (at once normally) or the drain begins."""
        st = self.state
        if st.writes_accepted.is_set() or st.draining:
            return
        waits = {asyncio.ensure_future(e.wait()) for e in (st.writes_accepted, st.draining_event)}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def running(self) -> int:
        return sum(1 for a in self.actors.values() if a.running)

    def status_fields(self) -> dict[str, str]:
        fields = {"leases": str(len(self.actors)), "inflight": str(self.running())}
        # only ever set: the API marks draining=1 too, and a renew must not flip it back
        if self.state.draining:
            fields["draining"] = "1"
        return fields

    def drain(self) -> None:
        for actor in list(self.actors.values()):
            actor.drain()

    def drop_all(self, why: str) -> None:
        """Fenced or lease lost: drop every session; they are re-queued on re-registration."""
        actors = list(self.actors.values())
        self.actors.clear()
        for actor in actors:
            self.orphans.add(actor.ref)
            actor.drop(why)
        self.metrics.sessions.set(0)

    async def claim(self, ref: str, reason: str) -> None:
        """Own ``ref``: acquire, take over from a dead holder, or tell the live holder.

        Work this replica does not take (``hands_back``) is re-published with ``reason``.
        """
        # one claim per session at a time (work, reclaimed work and mail can race)
        slot = self._claim_locks.get(ref)
        if slot is None:
            slot = self._claim_locks[ref] = _ClaimSlot()
        slot.users += 1
        try:
            async with slot.lock:
                await self._claim(ref, reason)
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._claim_locks[ref]

    async def _claim(self, ref: str, reason: str) -> None:
        sk = self.keys.session_ref(ref)
        actor = self.actors.get(ref)
        if actor is not None and reason == "force_release":
            # the lease was deleted under this actor: stop it now, then claim afresh
            await self.drop_if_stale(ref)
            actor = self.actors.get(ref)
        if actor is not None:
            if not actor.closing:
                actor.on_input()
                if reason == "start":
                    actor.start_soon()
                return
            await actor.closed.wait()  # it re-queues after release if input is left
        # never claim a session of a type this replica does not serve: hand it to its
        # type's stream (work read from a stale stream, mail, a takeover)
        session_type = (await self.streams.session_types([ref]))[ref]
        if session_type not in self.factories:
            await self.streams.publish_work(ref, reason, session_type)
            return
        if self.hands_back() or not await self._make_room():
            await self.streams.publish_work(ref, reason, session_type)
            return
        self._admitting += 1  # a slot is ours until the actor starts (or the claim ends)
        try:
            await self._acquire(sk, session_type, start=reason == "start")
        finally:
            self._admitting -= 1

    async def _make_room(self) -> bool:
        """At max_sessions, passivate the longest-idle sessions; False when all are busy."""
        return await make_room(
            self.actors.values,
            lambda: len(self.actors) + self._admitting,
            self.settings.max_sessions,
            self._evicted,
        )

    def _evicted(self, actor: Evictable) -> None:
        self.metrics.evicted.inc()
        log.info("session %s: longest idle, passivated for waiting work", actor.ref)

    async def _acquire(self, sk: SessionKeys, session_type: str, *, start: bool) -> None:
        """``start``: POST /v1/sessions/{id}/start asked for it: activate with no input."""
        ref = sk.ref
        s = self.settings
        replica_id = self.state.replica_id
        incarnation = self.state.incarnation
        taken_over = False
        try:
            lease = await self.store.acquire(sk, replica_id, incarnation, s.lease_ttl_ms)
            self.metrics.acquires.labels("acquired").inc()
        except LeaseHeld as held:
            if await self.store.replica_alive(held.replica_id, held.incarnation):
                self.metrics.acquires.labels("held").inc()
                # a start is passed on to the holder (never to ourselves: no mail loop)
                kind = "start" if start and held.replica_id != replica_id else "wake"
                await self.streams.send_mail(held.replica_id, kind, ref)
                return
            try:
                lease = await self.store.takeover(
                    sk,
                    (held.replica_id, held.incarnation, held.token),
                    replica_id,
                    incarnation,
                    s.lease_ttl_ms,
                )
            except LeaseHeld as won:
                # someone else took it first: make sure the winner looks at the inbox
                if await self.store.replica_alive(won.replica_id, won.incarnation):
                    kind = "start" if start and won.replica_id != replica_id else "wake"
                    await self.streams.send_mail(won.replica_id, kind, ref)
                return
            taken_over = True
            self.metrics.takeovers.inc()
            self.metrics.acquires.labels("takeover").inc()
            log.info(
                "took over %s from %s/%s (token %d -> %d)",
                ref, held.replica_id, held.incarnation, held.token, lease.token,
            )  # fmt: skip
        if incarnation != self.state.incarnation or self.state.fenced:
            # fenced or re-registered while acquiring: that lease names a dead incarnation
            await self.streams.publish_work(ref, "owner_death", session_type)
            return
        self._start_actor(lease, self.factories[session_type], taken_over, start)

    async def drop_if_stale(self, ref: str) -> bool:
        """Drop ``ref``'s actor when the lease no longer names it (force-released or taken
        over): it would only find out at its next write or renewal. True when dropped."""
        actor = self.actors.get(ref)
        if actor is None:
            return False
        own = await self.store.ownership(actor.session)
        mine = (self.state.replica_id, actor.incarnation, actor.token)
        if own.held and (own.replica_id, own.incarnation, own.token) == mine:
            return False
        actor.drop("lease force-released or taken over")
        await actor.closed.wait()
        return True

    def _start_actor(
        self, lease: Lease, factory: HostFactory, taken_over: bool = False, start: bool = False
    ) -> None:
        s = self.settings
        life = Activation(
            factory,
            store=self.store,
            streams=self.streams,
            session=lease.session,
            owner=(self.state.replica_id, lease.incarnation, lease.token),
            replica_can_write=self.state.can_write,
            state_max_bytes=s.state_max_bytes,
            passivate_timeout_s=s.passivate_timeout_s,
            activation_max_failures=s.activation_max_failures,
            input_max_bytes=min(s.started_input_max_bytes, s.ship_entry_max_bytes // 2),
            taken_over=taken_over,
            archive=self.transcripts,
        )
        actor = SessionActor(self, lease, life)
        if start:
            actor.start_soon()
        self.actors[actor.ref] = actor
        self.metrics.sessions.set(len(self.actors))
        actor.start()
        if self.state.draining:
            actor.drain()  # acquired while the drain began: release it (and re-queue) at once

    def forget_actor(self, actor: SessionActor) -> None:
        if self.actors.get(actor.ref) is actor:
            del self.actors[actor.ref]
            self.metrics.sessions.set(len(self.actors))

    def make_shipper(self, actor: SessionActor, next_seq: int) -> Shipper:
        s = self.settings

        def on_stop(exc: ShipStopped) -> None:
            # stale token or fenced: stop the session's run at once; a rejected batch is
            # surfaced to the actor on its next write instead
            if not isinstance(exc, ShipRejected):
                actor.drop(str(exc))

        shipper = Shipper(
            http=self.http,
            url=s.ingest_url,
            admin_token=s.admin_token,
            session=actor.session,
            token=actor.token,
            next_seq=next_seq,
            can_write=self.state.can_write,
            on_stop=on_stop,
            on_retry=self.metrics.ship_retries.inc,
            linger_s=s.ship_linger_ms / 1000,
            batch_max=s.ship_batch_max,
            batch_max_bytes=s.ship_batch_max_bytes,
            buffer_max=s.ship_buffer_max,
            entry_max_bytes=s.ship_entry_max_bytes,
            timeout_s=s.ship_timeout_s,
            replica_id=self.state.replica_id,
            incarnation=actor.incarnation,
        )
        shipper.start()
        return shipper
