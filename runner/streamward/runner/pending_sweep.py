"""The liveness sweep: every session in the pending index with runnable input and no live
owner is re-queued (reason ``sweep``). Run by the elected watchdog every sweep interval.

Bound: an input accepted at t is in the index from t (its enqueue ZADDs first). Its entry
is visited once its score is older than the grace (= the sweep interval), then at least
once per grace + interval while input is waiting. So a session whose owner vanished (lease
force-released, expired, or held by a dead replica: replica TTL) gets a ``sw:work`` entry
within replica TTL + grace + sweep interval, whatever happened to its own wake-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

log = logging.getLogger("streamward.runner.watchdog")

SWEEP_BATCH = 500
SWEEP_MAX_BATCHES = 40  # at most 20,000 entries per sweep; the rest waits for the next one


@dataclass(slots=True)
class SweepResult:
    visited: int = 0
    pruned: int = 0
    requeued: int = 0
    woken: int = 0
    unserved: int = 0  # runnable, ownerless, and no live runner serves the session's type


class PendingSweep:
    """One pass over the due part of ``sw:pending``."""

    def __init__(self, keys: Keys, store: LeaseStore, streams: Streams, grace_ms: int) -> None:
        self.keys = keys
        self.store = store
        self.streams = streams
        self.grace_ms = grace_ms

    async def sweep(self) -> SweepResult:
        out = SweepResult()
        now = await self.streams.now_ms()
        for _ in range(SWEEP_MAX_BATCHES):
            due = await self.streams.pending_due(now - self.grace_ms, SWEEP_BATCH)
            if not due:
                break
            await self._batch(due, now, out)
            if len(due) < SWEEP_BATCH:
                break
        if out.requeued:
            log.warning("liveness sweep: re-queued %d ownerless sessions", out.requeued)
        return out

    async def _batch(self, due: list[tuple[str, int]], now: int, out: SweepResult) -> None:
        refs: list[str] = []
        sessions = []
        stale: list[tuple[str, int]] = []
        for ref, score in due:
            try:
                sessions.append(self.keys.session_ref(ref))
                refs.append(ref)
            except ValueError:  # InvalidId: never written by streamward; drop it
                stale.append((ref, score))
        scores = dict(due)
        probes = await self.streams.probe_pending(sessions)
        prune: list[tuple[str, int]] = list(stale)
        bump: list[str] = []
        requeue: list[str] = []
        wake: list[tuple[str, str, str]] = []
        for ref, p in zip(refs, probes, strict=True):
            if not p.runnable:
                # empty, or every input held by the queue policy (a new input re-indexes it)
                prune.append((ref, scores[ref]))
            elif p.replica_id and p.owner_alive:
                bump.append(ref)
                # cheap nudge: a live holder with no actor for it (or lost mail) looks again
                wake.append((p.replica_id, "wake", ref))
            else:
                bump.append(ref)
                requeue.append(ref)
        out.visited += len(due)
        out.pruned += await self.store.scripts.prune_pending(self.keys.pending, prune)
        await self.streams.bump_pending(bump, now)
        # the claimer takes a dead holder's lease over (and marks its run per on_owner_death)
        if requeue:
            # a type nobody serves keeps its first entry on its own stream (read from id 0
            # when a runner of it starts); re-publishing every sweep would only pile up
            types = await self.streams.session_types(requeue)
            served = await self.streams.served_types()
            unserved = [r for r in requeue if types[r] not in served]
            requeue = [r for r in requeue if types[r] in served]
            out.unserved += len(unserved)
            await self.streams.publish_work_many(requeue, "sweep", types)
        out.requeued += len(requeue)
        await self.streams.send_mail_many(wake)
        out.woken += len(wake)
