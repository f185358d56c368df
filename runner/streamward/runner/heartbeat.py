"""Replica lease heartbeat (O(1) per tick) and batched session lease renewal."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from streamward.core.backoff import backoff_s
from streamward.lua.errors import ReplicaLost, is_write_refusal
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.config import RunnerSettings
from streamward.runner.lease import ReplicaLease
from streamward.runner.loop import Loop
from streamward.runner.metrics import Metrics
from streamward.runner.sessions import SessionBook
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner.heartbeat")


class ReplicaHeartbeat(Loop):
    """Renew the replica lease every TTL/4; re-register after a fence or a lost lease.

    One script call per tick whatever the number of sessions held. The self-fencing deadline
    itself is a timer on the loop (``ReplicaLease.renewed``), so a renew stuck on a dead
    socket cannot postpone it.
    """

    name = "replica_heartbeat"

    def __init__(self, state: ReplicaState, settings: RunnerSettings, lease: ReplicaLease) -> None:
        super().__init__()
        self.state = state
        self.settings = settings
        self.lease = lease

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        st = self.state
        period = self.settings.replica_renew_ms / 1000
        failures = 0
        while True:
            tick = loop.time()
            if st.fenced:
                try:
                    await asyncio.wait_for(self.lease.register(), timeout=max(1.0, 4 * period))
                    failures = 0
                except (RedisError, OSError, TimeoutError) as exc:
                    failures += 1
                    if is_write_refusal(exc):
                        self.lease.note_writes(False, exc)
                    if failures == 1 or failures % 20 == 0:
                        log.warning("re-registration failed (%d times): %r", failures, exc)
                    await asyncio.sleep(min(period, backoff_s(failures)))
                    continue
            else:
                sent = loop.time()
                try:
                    accepted = await asyncio.wait_for(
                        self.lease.renew(), timeout=max(0.05, st.deadline - sent)
                    )
                    self.lease.renewed(sent)
                    self.lease.note_writes(accepted, "heartbeat index write refused")
                    failures = 0
                except ReplicaLost as exc:
                    self.lease.lose_everything(f"replica lease lost: {exc}")
                    continue  # re-register at once
                except (RedisError, OSError, TimeoutError) as exc:
                    # a refusal is an answer, not a partition; the deadline still holds: a
                    # lease Redis could not extend (MISCONF, READONLY) does run out
                    failures += 1
                    if is_write_refusal(exc):
                        self.lease.note_writes(False, exc)
                    if failures == 1 or failures % 20 == 0:
                        log.warning("replica renew failed (%d in a row): %r", failures, exc)
            await asyncio.sleep(max(0.0, tick + period - loop.time()))


class LeaseRenewer(Loop):
    """Renew every held session lease every lease TTL / 3, in chunked batch script calls."""

    name = "lease_renewal"

    def __init__(
        self,
        state: ReplicaState,
        settings: RunnerSettings,
        store: LeaseStore,
        streams: Streams,
        metrics: Metrics,
        sessions: SessionBook,
    ) -> None:
        super().__init__()
        self.state = state
        self.settings = settings
        self.store = store
        self.streams = streams
        self.metrics = metrics
        self.sessions = sessions

    async def run(self) -> None:
        st, m = self.state, self.metrics
        period = self.settings.lease_renew_ms / 1000
        while True:
            await asyncio.sleep(period)
            if st.fenced:
                continue
            incarnation = st.incarnation
            actors = self.sessions.actors
            held = [(a.session, a.token) for a in actors.values() if not a.closing]
            if not held:
                continue
            try:
                res = await self.store.renew_many(
                    st.replica_id, incarnation, held, self.settings.lease_ttl_ms
                )
            except RedisError as exc:
                log.warning("session lease renewal failed: %r", exc)
                continue
            if incarnation != st.incarnation:
                continue  # re-registered meanwhile: those actors are gone already
            tokens = {sk.ref: token for sk, token in held}
            m.renewals.labels("renewed").inc(len(res.renewed))
            m.renewals.labels("lost").inc(len(res.lost))
            for sk, why in res.lost:
                m.lost.labels(why).inc()
                actor = self.sessions.actors.get(sk.ref)
                if actor is not None and actor.token == tokens.get(sk.ref) and not actor.closing:
                    actor.drop(f"session lease lost ({why})")
            try:
                # heal the index if a watchdog raced our re-registration and deleted it
                await self.streams.index_sessions(st.replica_id, [sk.ref for sk in res.renewed])
            except RedisError as exc:
                log.debug("index refresh failed: %r", exc)
