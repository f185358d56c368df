"""Replica lease heartbeat (O(1) per tick) and batched session lease renewal."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from streamward.lua.errors import ReplicaLost
from streamward.runner.shipper import backoff_s

if TYPE_CHECKING:
    from streamward.runner.replica import Replica

log = logging.getLogger("streamward.runner.heartbeat")


async def replica_heartbeat(r: Replica) -> None:
    """Renew the replica lease every TTL/4; re-register after a fence or a lost lease.

    One script call per tick whatever the number of sessions held. The self-fencing deadline
    itself is a timer on the loop (``Replica.renewed``), so a renew stuck on a dead socket
    cannot postpone it.
    """
    loop = asyncio.get_running_loop()
    period = r.settings.replica_renew_ms / 1000
    failures = 0
    while True:
        tick = loop.time()
        if r.fenced:
            try:
                await asyncio.wait_for(r.register(), timeout=max(1.0, 4 * period))
                failures = 0
            except (RedisError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("re-registration failed (%d times): %r", failures, exc)
                await asyncio.sleep(min(period, backoff_s(failures)))
                continue
        else:
            sent = loop.time()
            try:
                await asyncio.wait_for(
                    r.store.renew_replica(
                        r.replica_id, r.incarnation, r.settings.replica_ttl_ms, r.status_fields()
                    ),
                    timeout=max(0.05, r.deadline - sent),
                )
                r.renewed(sent)
                failures = 0
            except ReplicaLost as exc:
                r.lose_everything(f"replica lease lost: {exc}")
                continue  # re-register at once
            except (RedisError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("replica renew failed (%d in a row): %r", failures, exc)
        await asyncio.sleep(max(0.0, tick + period - loop.time()))


async def lease_renewal(r: Replica) -> None:
    """Renew every held session lease every lease TTL / 3, in chunked batch script calls."""
    period = r.settings.lease_renew_ms / 1000
    while True:
        await asyncio.sleep(period)
        if r.fenced:
            continue
        incarnation = r.incarnation
        held = [(a.session, a.token) for a in r.actors.values() if not a.closing]
        if not held:
            continue
        try:
            res = await r.store.renew_many(r.replica_id, incarnation, held, r.settings.lease_ttl_ms)
        except RedisError as exc:
            log.warning("session lease renewal failed: %r", exc)
            continue
        if incarnation != r.incarnation:
            continue  # re-registered meanwhile: those actors are gone already
        tokens = {sk.ref: token for sk, token in held}
        r.metrics.renewals.labels("renewed").inc(len(res.renewed))
        r.metrics.renewals.labels("lost").inc(len(res.lost))
        for sk, why in res.lost:
            r.metrics.lost.labels(why).inc()
            actor = r.actors.get(sk.ref)
            if actor is not None and actor.token == tokens.get(sk.ref) and not actor.closing:
                actor.drop(f"session lease lost ({why})")
        try:
            # heal the index if a watchdog raced our re-registration and deleted it
            await r.streams.index_sessions(r.replica_id, [sk.ref for sk in res.renewed])
        except RedisError as exc:
            log.debug("index refresh failed: %r", exc)
