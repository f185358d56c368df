"""Replica lease heartbeat (O(1) per tick) and batched session lease renewal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Protocol

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


class Renewer(Protocol):
    """The sync replica renewal (``lua.syncrenew.SyncReplicaRenewal``; a fake in tests)."""

    def renew(
        self, replica_id: str, incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None
    ) -> tuple[int, bool]: ...
    def close(self) -> None: ...


class ReplicaHeartbeat(Loop):
    """The replica heartbeat: a renewal thread, and a loop that ticks and re-registers.

    The thread renews the replica lease every TTL/4 on its own connection (one script call
    per tick whatever the number of sessions held), so a handler that blocks the event loop
    for a few seconds cannot starve it. The loop posts a progress tick (with the status
    fields) every TTL/4; the thread renews only while the last tick is younger than
    ``loop_stall_ms``: a loop wedged for good stops renewing, its lease expires and its
    sessions move. Re-registration (after a fence or a lost lease) runs on the loop. The
    self-fencing deadline is pushed by each successful renewal (``ReplicaLease.renewed``,
    monotonic clock) and enforced by a timer on the loop and before every ingest request.
    """

    name = "replica_heartbeat"

    def __init__(
        self, state: ReplicaState, settings: RunnerSettings, lease: ReplicaLease, renewer: Renewer
    ) -> None:
        super().__init__()
        self.state = state
        self.settings = settings
        self.lease = lease
        self.renewer = renewer
        self.stall_bound_s = settings.loop_stall_ms / 1000
        self.failures = 0
        self.stalled = False  # the thread is withholding renewals: the loop stopped ticking
        # (monotonic time of the loop's last tick, status fields): one tuple, swapped whole
        self._progress: tuple[float, dict[str, str]] = (time.monotonic(), {})
        self._lost = ""  # the incarnation the thread saw lost (not renewed again)
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the loop side ---------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.tick()
        super().start()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._thread_main, name="replica-heartbeat", daemon=True
            )
            self._thread.start()

    async def stop(self) -> None:
        await super().stop()
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * self.settings.replica_ttl_ms / 1000)

    def tick(self) -> None:
        """The loop made progress: post it, with the status fields the renewal sends."""
        self._progress = (time.monotonic(), self.lease.sessions.status_fields())

    async def run(self) -> None:
        st = self.state
        period = self.settings.replica_renew_ms / 1000
        failures = 0
        while True:
            self.tick()
            if st.fenced:
                try:
                    await asyncio.wait_for(self.lease.register(), timeout=max(1.0, 4 * period))
                    failures = 0
                    self.tick()
                except (RedisError, OSError, TimeoutError) as exc:
                    failures += 1
                    if is_write_refusal(exc):
                        self.lease.note_writes(False, exc)
                    if failures == 1 or failures % 20 == 0:
                        log.warning("re-registration failed (%d times): %r", failures, exc)
                    await asyncio.sleep(min(period, backoff_s(failures)))
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)

    def _lost_on_loop(self, incarnation: str, why: str) -> None:
        if self.state.incarnation == incarnation and not self.state.fenced:
            self.lease.lose_everything(why)
            self._wake.set()  # re-register at once

    # -- the thread side -------------------------------------------------------------------

    def _thread_main(self) -> None:
        period = self.settings.replica_renew_ms / 1000
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                self.renew_once(t0)
                self._stop.wait(max(0.0, t0 + period - time.monotonic()))
        finally:
            with contextlib.suppress(Exception):
                self.renewer.close()

    def renew_once(self, now: float) -> bool:
        """One heartbeat at monotonic time ``now`` (the send time); True when renewed.

        Skipped while fenced (the loop re-registers) and while the loop's last tick is
        older than the stall bound.
        """
        st = self.state
        incarnation = st.incarnation
        if st.fenced or not incarnation or incarnation == self._lost:
            return False
        ticked, fields = self._progress
        if now - ticked > self.stall_bound_s:
            if not self.stalled:
                log.error(
                    "event loop made no progress for %.1fs (bound %.1fs): not renewing the "
                    "replica lease; its sessions move to other replicas",
                    now - ticked, self.stall_bound_s,
                )  # fmt: skip
            self.stalled = True
            return False
        if self.stalled:
            log.warning("event loop ticking again after %.1fs", now - ticked)
            self.stalled = False
        try:
            _, accepted = self.renewer.renew(
                st.replica_id, incarnation, self.settings.replica_ttl_ms, fields
            )
        except ReplicaLost as exc:
            self._lost = incarnation
            self._post_lost(incarnation, f"replica lease lost: {exc}")
            return False
        except (RedisError, OSError) as exc:
            # a refusal is an answer, not a partition; the deadline still holds: a lease
            # Redis could not extend (MISCONF, READONLY) does run out
            self.failures += 1
            if is_write_refusal(exc):
                self._post_writes(False, exc)
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("replica renew failed (%d in a row): %r", self.failures, exc)
            return False
        self.failures = 0
        self.lease.renewed(now)
        self._post_writes(accepted, "heartbeat index write refused")
        return True

    def _post_writes(self, accepted: bool, why: object) -> None:
        """``ReplicaLease.note_writes`` on the loop (it sets an asyncio.Event)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.lease.note_writes, accepted, why)

    def _post_lost(self, incarnation: str, why: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._lost_on_loop, incarnation, why)


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
