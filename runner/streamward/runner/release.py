"""Leaving a session: release the lease, then re-check the inbox and re-queue."""

from __future__ import annotations

import asyncio
import logging

from streamward.lua.errors import NotOwner
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.inbox import stream_id
from streamward.runner.owner_death import SessionState
from streamward.runner.shipper import Shipper, ShipStopped

log = logging.getLogger("streamward.runner.actor")

DRAIN_INTERRUPT_FLUSH_S = 2.0


async def release_session(
    store: LeaseStore,
    streams: Streams,
    session: SessionKeys,
    owner: tuple[str, str, int],
    state: SessionState,
    mode: str,
) -> None:
    """Release the lease held as ``owner`` (replica id, incarnation, token); then
    (architecture order) re-check the inbox and re-queue with reason ``mode``."""
    ref = session.ref
    replica_id, incarnation, token = owner
    if mode in ("passivate", "stop"):  # stop: POST /v1/sessions/{id}/stop
        own = await store.ownership(session)
        if (own.replica_id, own.incarnation, own.token) != owner:
            # force-released (e.g. the session was deleted): not ours to mark or release
            log.info("session %s: lease no longer ours; leaving it as it is", ref)
            return
        if state.meta_exists:
            # before the release: an input enqueued meanwhile sets status back to active;
            # an expired or deleted session keeps its status (and its reason)
            status = (await streams.meta(session)).get("status", "")
            if status in ("", "active", "idle", "passivated"):
                why = "stopped" if mode == "stop" else "idle"
                await streams.set_meta(session, status="passivated", reason=why)
    try:
        await store.release(session, replica_id, incarnation, token, mode)
    except NotOwner as exc:
        log.info("session %s: not released, someone else holds it (%s)", ref, exc)
        return
    log.info("session %s released (%s)", ref, mode)
    if mode == "error":
        return  # a failing actor would fail again elsewhere: wait for the next input
    # the API appends before it reads the lease, so an input that raced the release is
    # either seen here or routed by the API to the work queue
    if await has_runnable_input(streams, session, state.hold_until):
        await streams.publish_work(ref, mode)


async def has_runnable_input(streams: Streams, session: SessionKeys, hold: str | None) -> bool:
    if not await streams.pending(session):
        return False
    if hold is None:
        return True
    return stream_id(await streams.inbox_last_id(session)) > stream_id(hold)


async def mark_cut_run(
    shipper: Shipper, ref: str, run_id: str, replica_id: str, token: int
) -> None:
    """Write ``run.interrupted`` for a run cut short by the drain timeout (best effort)."""
    data = {
        "reason": "drain_timeout",
        "previous_replica_id": replica_id,
        "previous_token": token,
        "policy": "restart",
    }
    try:
        async with asyncio.timeout(DRAIN_INTERRUPT_FLUSH_S):  # put may wait for buffer room
            await shipper.put(run_id, "run.interrupted", data)
            await shipper.flush()
    except (ShipStopped, TimeoutError) as exc:
        # the next owner sees active_run_id still set and writes run.interrupted itself
        log.warning("session %s: could not mark run %s interrupted: %r", ref, run_id, exc)
