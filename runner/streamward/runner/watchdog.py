"""Watchdog duty: one replica at a time re-queues the sessions of dead replicas and, every
sweep interval, sweeps the pending index (runner/pending_sweep.py)."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.loop import Loop
from streamward.runner.metrics import Metrics
from streamward.runner.pending_sweep import PendingSweep
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner.watchdog")


def watchdog_period_s(replica_ttl_ms: int) -> float:
    """Tick: TTL/16 within [0.1 s, 0.25 s], so a death is noticed well inside TTL + 1 s.

    Every replica claims the lock each tick (one script call), so when the watchdog itself
    dies another one takes over at most a tick after the lock expires.
    """
    return min(0.25, max(0.1, replica_ttl_ms / 16000))


class Watchdog(Loop):
    """Claim ``sw:watchdog`` (TTL = replica TTL) every tick; the holder sweeps dead replicas."""

    name = "watchdog"

    def __init__(
        self,
        state: ReplicaState,
        replica_ttl_ms: int,
        keys: Keys,
        store: LeaseStore,
        streams: Streams,
        sweep_interval_s: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.state = state
        self.replica_ttl_ms = replica_ttl_ms
        self.keys = keys
        self.store = store
        self.streams = streams
        self.sweep_interval_s = sweep_interval_s
        self.metrics = metrics
        self.pending = PendingSweep(keys, store, streams, grace_ms=int(sweep_interval_s * 1000))
        self._next_sweep = 0.0

    async def run(self) -> None:
        st = self.state
        period = watchdog_period_s(self.replica_ttl_ms)
        holding = False
        while True:
            await asyncio.sleep(period)
            if st.fenced:
                holding = False
                continue
            try:
                owner = f"{st.replica_id}:{st.incarnation}"
                held = await self.store.claim_lock(self.keys.watchdog, owner, self.replica_ttl_ms)
                if held != holding:
                    log.info("watchdog duty %s", "taken" if held else "lost")
                    holding = held
                if held:
                    await self.sweep_dead_replicas()
                    await self.maybe_sweep_pending()
            except RedisError as exc:
                log.debug("watchdog tick failed: %r", exc)

    async def maybe_sweep_pending(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_sweep:
            return
        self._next_sweep = loop.time() + self.sweep_interval_s
        result = await self.pending.sweep()
        if self.metrics is not None:
            self.metrics.sweep_requeued.inc(result.requeued)
            self.metrics.pending_index.set(await self.streams.pending_size())

    async def sweep_dead_replicas(self) -> int:
        """Re-queue every session of each replica whose lease key is gone; forget it."""
        me = self.state.replica_id
        ids = [rid for rid, _ in await self.streams.replica_ids() if rid != me]
        alive = await self.streams.replicas_alive(ids)
        requeued = 0
        for rid, ok in zip(ids, alive, strict=True):
            if ok:
                continue
            refs = await self.streams.replica_sessions(rid)
            # reason owner_death: the claimer takes the lease over and applies on_owner_death
            await self.streams.publish_work_many(refs, "owner_death")
            requeued += len(refs)
            # a replica that re-registered meanwhile keeps its index and mailbox
            if not await self.store.replica_alive(rid):
                await self.streams.forget_replica(rid)
            log.warning("replica %s is dead: re-queued its %d sessions", rid, len(refs))
        return requeued
