"""The replica's mailbox (input, wake, cancel, drain, released, start, stop, updated) and the
inbox sweep safety net."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from redis.exceptions import RedisError

from streamward.core.backoff import backoff_s
from streamward.lua.entries import SESSION_RUN_ID, SESSION_UPDATED, session_updated_data
from streamward.lua.errors import InvalidId
from streamward.lua.keys import Keys
from streamward.lua.streams import Streams
from streamward.lua.work import Mail
from streamward.runner.actor import SessionActor
from streamward.runner.config import RunnerSettings
from streamward.runner.intake import READ_BLOCK_MS
from streamward.runner.loop import Loop
from streamward.runner.sessions import SessionBook
from streamward.runner.shipper import ShipStopped
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner.intake")


class Mailbox(Loop):
    """Read this replica's mail stream; ``on_drain(why)`` is called for a ``drain`` mail."""

    name = "mailbox"

    def __init__(
        self,
        state: ReplicaState,
        keys: Keys,
        streams: Streams,
        sessions: SessionBook,
        on_drain: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.state = state
        self.keys = keys
        self.streams = streams
        self.sessions = sessions
        self.on_drain = on_drain
        self.cursor = "0-0"

    def reset(self) -> None:
        """A new incarnation registered: its mail stream is new, read it from the start."""
        self.cursor = "0-0"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                mails = await self.streams.read_mail(
                    self.state.replica_id, self.cursor, READ_BLOCK_MS
                )
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("mailbox read failed (%d in a row): %r", failures, exc)
                await asyncio.sleep(backoff_s(failures))
                continue
            for mail in mails:
                self.cursor = mail.id
                try:
                    await self.handle(mail)
                except (RedisError, InvalidId) as exc:
                    log.warning(
                        "mail %s (%s %s) not handled: %r", mail.id, mail.kind, mail.session_ref, exc
                    )

    async def handle(self, mail: Mail) -> None:
        if mail.kind == "drain":
            self.on_drain("drain requested by mail")
            return
        if self.state.fenced or not mail.session_ref:
            return
        actor = self.sessions.actors.get(mail.session_ref)
        if mail.kind == "released":
            # an operator force-released it: stop the actor at once (nothing more it writes
            # would be accepted), then claim it again if input waits (the API re-queued it too)
            if await self.sessions.drop_if_stale(mail.session_ref):
                sk = self.keys.session_ref(mail.session_ref)
                if await self.streams.pending(sk) > 0:
                    await self.sessions.claim(mail.session_ref, "force_release")
            return
        if mail.kind in ("start", "stop", "updated"):
            await self._session_control(mail, actor)
            return
        if mail.kind == "cancel":
            if actor is not None:  # (it keeps one for a run about to start)
                await actor.cancel_requested(mail.run_id)
            return
        if mail.kind not in ("input", "wake"):
            log.warning("unknown mail kind %r", mail.kind)
            return
        if actor is not None and not actor.closing:
            actor.on_input(mail.multitask)
            return
        if actor is not None:
            return  # it is leaving: it re-checks the inbox after its release and re-queues
        # the sender believed we own it; we do not (any more): route it like new work
        sk = self.keys.session_ref(mail.session_ref)
        if await self.streams.pending(sk) == 0:
            return
        await self.sessions.claim(mail.session_ref, "wake")

    async def _session_control(self, mail: Mail, actor: SessionActor | None) -> None:
        """The session resource endpoints: ``start`` (activate now, or claim it: the API saw
        this replica hold it), ``stop`` (passivate now), ``updated`` (a PATCH: the owner is
        the log's only writer, so it writes the ``session.updated`` entry with its next seq)."""
        if mail.kind == "start":
            if actor is not None and not actor.closing:
                actor.start_soon()
            else:
                await self.sessions.claim(mail.session_ref, "start")
        elif actor is None or actor.closing:
            return  # gone already: stopped, or released (the PATCH's meta holds the change)
        elif mail.kind == "stop":
            actor.stop()
        elif actor.shipper is not None:
            data = session_updated_data(await self.streams.meta(actor.session))
            with contextlib.suppress(ShipStopped):  # the session moved meanwhile
                await actor.shipper.put(SESSION_RUN_ID, SESSION_UPDATED, data)


class InboxSweep(Loop):
    """Safety net for lost mail: look at every owned inbox (one pipelined call) periodically."""

    name = "inbox_sweep"

    def __init__(
        self,
        state: ReplicaState,
        settings: RunnerSettings,
        streams: Streams,
        sessions: SessionBook,
    ) -> None:
        super().__init__()
        self.state = state
        self.settings = settings
        self.streams = streams
        self.sessions = sessions

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s * random.uniform(0.8, 1.2))
            if self.state.fenced:
                continue
            actors = [a for a in self.sessions.actors.values() if not a.closing]
            if not actors:
                continue
            try:
                states = await self.streams.sweep_sessions(
                    [(a.session, a.current_run_id) for a in actors]
                )
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
                    actor.on_input()  # (its mail may be the lost one of an interrupt)
