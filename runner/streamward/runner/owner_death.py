"""A previous owner's broken run: ``run.interrupted`` and the ``on_owner_death`` policy."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from streamward.core.contract import TERMINAL_STATUSES
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import SessionKeys
from streamward.lua.streams import Streams
from streamward.runner.inbox import INBOX_WINDOW, stream_id
from streamward.runner.shipper import Shipper

log = logging.getLogger("streamward.runner.actor")

POLICIES = frozenset({"restart", "queue", "drop"})


@dataclass
class SessionState:
    """What the actor learnt when it opened the session."""

    meta_exists: bool = False
    hold_until: str | None = None  # queue policy: inputs up to this inbox id wait
    dead: bool = False  # drop policy applied: leave at once
    drop_until: str | None = None  # drop policy: inputs up to this inbox id are dropped
    # the inbox id of the head input whose take the last peek recorded under our token
    # (fenced): only such a run's start is published to a waiting API (Streams.publish_start)
    head_taken: str = ""
    # the inbox id of the head input whose start notice that peek published itself
    head_announced: str = ""


class OwnerDeath:
    """Applies ``on_owner_death`` for one session; ``complete`` is the actor's fenced
    advance of the inbox (raises StaleToken when the session moved)."""

    def __init__(
        self,
        streams: Streams,
        session: SessionKeys,
        shipper: Shipper,
        state: SessionState,
        complete: Callable[[InboxItem], Awaitable[None]],
    ) -> None:
        self.streams = streams
        self.session = session
        self.shipper = shipper
        self.state = state
        self.complete = complete

    async def interrupted(
        self, run_id: str, policy: str, meta: Mapping[str, str] | None = None
    ) -> None:
        """Mark the previous owner's run interrupted and apply ``policy``. ``meta`` (the
        session's) tells a force release (its token is the run's) from an owner death."""
        ref = self.session.ref
        if policy not in POLICIES:
            log.warning("session %s: unknown on_owner_death %r, using restart", ref, policy)
            policy = "restart"
        run = await self.streams.run_state(self.session, run_id)
        reason = "owner_death"
        data: dict[str, object] = {}
        m = meta or {}
        forced = m.get("force_released_token")
        if run is not None and forced and run.token is not None and str(run.token) == forced:
            reason = "force_release"
            data["release_reason"] = m.get("last_release_reason", "")
            data["release_kind"] = m.get("release_kind", "force")
        data.update(
            {
                "reason": reason,
                "previous_replica_id": run.replica_id if run else None,
                "previous_token": run.token if run else None,
                "policy": policy,
            }
        )
        await self.shipper.put(run_id, "run.interrupted", data)
        await self.shipper.flush()
        log.info("session %s: run %s interrupted (%s, %s)", ref, run_id, reason, policy)
        if policy == "queue":
            last = await self.streams.inbox_last_id(self.session)
            if last != "0-0":
                await self.streams.set_meta(self.session, hold_until_id=last)
                self.state.hold_until = last
        elif policy == "drop":
            self.state.drop_until = await self.streams.inbox_last_id(self.session)
            await self.drop_inputs()

    async def drop_inputs(self) -> None:
        """Drop policy: every pending input ends ``run.cancelled`` (reason drop); meta dead."""
        assert self.state.drop_until is not None
        until = stream_id(self.state.drop_until)
        dropped = 0
        while True:
            items = [
                i
                for i in await self.streams.read_inbox(self.session, count=INBOX_WINDOW)
                if stream_id(i.id) <= until
            ]
            if not items:
                break
            for item in items:
                run = await self.streams.run_state(self.session, item.run_id)
                if run is None or run.status not in TERMINAL_STATUSES:  # not twice on retry
                    await self.shipper.put(item.run_id, "run.cancelled", {"reason": "drop"})
            await self.shipper.flush()
            for item in items:
                await self.complete(item)
            dropped += len(items)
        await self.streams.set_meta(self.session, status="dead")
        self.state.drop_until = None
        self.state.dead = True
        log.info("session %s: dropped %d pending inputs (policy drop)", self.session.ref, dropped)
