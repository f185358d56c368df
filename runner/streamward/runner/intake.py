"""Work intake (``sw:work`` consumer group + XAUTOCLAIM), the mailbox, the inbox sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from redis.exceptions import RedisError, ResponseError

from streamward.lua.errors import InvalidId
from streamward.lua.work import Mail, WorkItem
from streamward.runner.shipper import backoff_s

if TYPE_CHECKING:
    from streamward.runner.replica import Replica

log = logging.getLogger("streamward.runner.intake")

READ_BLOCK_MS = 1000
READ_COUNT = 32


async def work_intake(r: Replica) -> None:
    """XREADGROUP on ``sw:work`` while under ``max_sessions``; stops when draining starts."""
    failures = 0
    while not r.draining:
        capacity = r.capacity()
        if r.fenced or capacity <= 0:
            await asyncio.sleep(0.1)
            continue
        read = asyncio.create_task(
            r.streams.read_work(r.replica_id, min(capacity, READ_COUNT), READ_BLOCK_MS)
        )
        stop = asyncio.create_task(r.draining_event.wait())
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not read.done():
                # draining: stop claiming now rather than after the blocking read times out
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
        if read.cancelled():
            return
        try:
            items = read.result()
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the group (restart without persistence)
                with contextlib.suppress(RedisError):
                    await r.streams.ensure_work_group()
                continue
            items = []
            failures += 1
            log.warning("work read failed: %r", exc)
            await asyncio.sleep(backoff_s(failures))
        except (RedisError, OSError) as exc:
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning("work read failed (%d in a row): %r", failures, exc)
            await asyncio.sleep(backoff_s(failures))
            continue
        failures = 0
        for item in items:
            await handle_work(r, item)


async def work_autoclaim(r: Replica) -> None:
    """Reclaim work entries left unacknowledged by consumers that died (XAUTOCLAIM)."""
    ttl_ms = r.settings.replica_ttl_ms
    while not r.draining:
        await asyncio.sleep(ttl_ms / 2000 * random.uniform(0.8, 1.2))
        capacity = r.capacity()
        if r.fenced or r.draining or capacity <= 0:
            continue
        try:
            items = await r.streams.autoclaim_work(r.replica_id, ttl_ms, min(capacity, READ_COUNT))
        except RedisError as exc:
            log.debug("autoclaim failed: %r", exc)
            continue
        for item in items:
            log.info("reclaimed work entry %s for %s", item.id, item.session_ref)
            await handle_work(r, item)


async def handle_work(r: Replica, item: WorkItem) -> None:
    """Claim the session of one work entry, then acknowledge (and delete) the entry."""
    try:
        if r.draining or not r.can_write():
            # not ours to take any more: hand it back now rather than leave it pending
            await r.streams.publish_work(item.session_ref, item.reason)
        else:
            await r.claim(item.session_ref, item.reason)
    except InvalidId as exc:
        log.warning("work entry %s names an invalid session: %s", item.id, exc)
    except RedisError as exc:
        # not acknowledged: XAUTOCLAIM hands it to someone after the replica TTL
        log.warning("claim of %s failed: %r", item.session_ref, exc)
        return
    try:
        await r.streams.ack_work(item.id)
    except RedisError as exc:
        log.warning("ack of work entry %s failed: %r", item.id, exc)


async def mailbox(r: Replica) -> None:
    """Read this replica's mailbox: new input, cancel, drain, wake."""
    failures = 0
    while True:
        try:
            mails = await r.streams.read_mail(r.replica_id, r.mail_cursor, READ_BLOCK_MS)
            failures = 0
        except (RedisError, OSError) as exc:
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning("mailbox read failed (%d in a row): %r", failures, exc)
            await asyncio.sleep(backoff_s(failures))
            continue
        for mail in mails:
            r.mail_cursor = mail.id
            try:
                await handle_mail(r, mail)
            except (RedisError, InvalidId) as exc:
                log.warning(
                    "mail %s (%s %s) not handled: %r", mail.id, mail.kind, mail.session_ref, exc
                )


async def handle_mail(r: Replica, mail: Mail) -> None:
    if mail.kind == "drain":
        r.request_shutdown("drain requested by mail")
        return
    if r.fenced or not mail.session_ref:
        return
    actor = r.actors.get(mail.session_ref)
    if mail.kind == "cancel":
        if actor is not None and actor.current_run_id == mail.run_id:
            # the API cancels the active run for a multitask=interrupt input: say so
            items = await r.streams.read_inbox(actor.session, count=100)
            interrupted = any(i.multitask == "interrupt" for i in items[1:])
            actor.request_cancel(mail.run_id, "interrupt" if interrupted else "cancel")
        return
    if mail.kind not in ("input", "wake"):
        log.warning("unknown mail kind %r", mail.kind)
        return
    if actor is not None and not actor.closing:
        actor.on_input()
        return
    if actor is not None:
        return  # it is leaving: it re-checks the inbox after its release and re-queues
    # the sender believed we own it; we do not (any more): route it like new work
    sk = r.keys.session_ref(mail.session_ref)
    if await r.streams.pending(sk) == 0:
        return
    if r.draining or not r.can_write():
        await r.streams.publish_work(mail.session_ref, "wake")
    else:
        await r.claim(mail.session_ref, "mail")


async def inbox_sweep(r: Replica) -> None:
    """Safety net for lost mail: look at every owned inbox (one pipelined call) periodically."""
    while True:
        await asyncio.sleep(r.settings.sweep_interval_s * random.uniform(0.8, 1.2))
        if r.fenced:
            continue
        actors = [a for a in r.actors.values() if not a.closing]
        if not actors:
            continue
        try:
            states = await r.streams.sweep_sessions([(a.session, a.current_run_id) for a in actors])
        except RedisError as exc:
            log.debug("inbox sweep failed: %r", exc)
            continue
        for actor, (pending, cancel) in zip(actors, states, strict=True):
            run_id = actor.current_run_id
            if run_id:
                if cancel:
                    actor.request_cancel(run_id, "cancel")
                elif pending > 1:
                    actor.on_input()  # an interrupting input may be waiting
            elif pending > 0:
                actor.wake()
