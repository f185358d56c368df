"""Watchdog duty: one replica at a time re-queues the sessions of dead replicas."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from streamward.runner.replica import Replica

log = logging.getLogger("streamward.runner.watchdog")


def watchdog_period_s(replica_ttl_ms: int) -> float:
    """Tick: TTL/16 within [0.1 s, 0.25 s], so a death is noticed well inside TTL + 1 s.

    Every replica claims the lock each tick (one script call), so when the watchdog itself
    dies another one takes over at most a tick after the lock expires.
    """
    return min(0.25, max(0.1, replica_ttl_ms / 16000))


async def watchdog(r: Replica) -> None:
    """Claim ``sw:watchdog`` (TTL = replica TTL) every tick; the holder sweeps dead replicas."""
    period = watchdog_period_s(r.settings.replica_ttl_ms)
    holding = False
    while True:
        await asyncio.sleep(period)
        if r.fenced:
            holding = False
            continue
        try:
            owner = f"{r.replica_id}:{r.incarnation}"
            held = await r.store.claim_lock(r.keys.watchdog, owner, r.settings.replica_ttl_ms)
            if held != holding:
                log.info("watchdog duty %s", "taken" if held else "lost")
                holding = held
            if held:
                await sweep_dead_replicas(r)
        except RedisError as exc:
            log.debug("watchdog tick failed: %r", exc)


async def sweep_dead_replicas(r: Replica) -> int:
    """Re-queue every session of each replica whose lease key is gone; forget that replica."""
    ids = [rid for rid, _ in await r.streams.replica_ids() if rid != r.replica_id]
    alive = await r.streams.replicas_alive(ids)
    requeued = 0
    for rid, ok in zip(ids, alive, strict=True):
        if ok:
            continue
        refs = await r.streams.replica_sessions(rid)
        # reason owner_death: the claimer takes the lease over and applies on_owner_death
        await r.streams.publish_work_many(refs, "owner_death")
        requeued += len(refs)
        # a replica that re-registered meanwhile keeps its index and mailbox
        if not await r.store.replica_alive(rid):
            await r.streams.forget_replica(rid)
        log.warning("replica %s is dead: re-queued its %d sessions", rid, len(refs))
    return requeued
