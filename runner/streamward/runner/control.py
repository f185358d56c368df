"""``POST /v1/sessions/{id}/start`` and ``/stop`` as a session actor sees them (mails
``start`` / ``stop``, or work with reason ``start``): activate with no input and stay for
``close_delay``; or leave now, passivating with reason ``stopped`` (docs/runner.md)."""

from __future__ import annotations

import asyncio

from streamward.lua.inbox import InboxMeta
from streamward.lua.keys import SessionKeys
from streamward.runner.admission import IdleSlot
from streamward.runner.lifecycle import Activation


class ActorControl:
    """The start / stop half of ``SessionActor`` (kept apart: the actor is long enough)."""

    session: SessionKeys
    token: int
    life: Activation
    idle: IdleSlot
    _wake: asyncio.Event
    _idle_since: float
    # how the actor leaves once its run (if any) ends: "" = it serves, "drain", "stop"
    _draining: str
    _start_now: bool = False  # activate at the next turn, even with no input

    async def _complete(self, item: InboxMeta, *, last: bool = False) -> None:
        raise NotImplementedError  # the actor's fenced inbox advance

    def wake(self) -> None:
        self.idle.keep()  # an eviction on its way is off
        self._wake.set()

    def start_soon(self) -> None:
        """Activate the session host now (no handler run, no run entries) and stay for
        ``close_delay``; the API waits for meta ``activated_token`` to name our token."""
        self._start_now = True
        self.wake()

    def stop(self) -> None:
        """Leave now: start nothing new, let the running run end (the API refuses a stop
        with an active run unless it cancelled it), passivate (stopped), release."""
        if not self._draining:  # a drain already on its way stays a drain (a handoff)
            self._draining = "stop"
        self._wake.set()

    async def _start_host(self) -> bool:
        """The ``start_soon`` turn: False when the host's ``activate`` raised (recorded and
        backed off like an activation for an input; the actor then releases)."""
        self._start_now = False
        if not self.life.active and not await self.life.start(self._complete):
            return False
        await self.life.streams.set_meta(self.session, activated_token=self.token)
        self._idle_since = asyncio.get_running_loop().time()  # close_delay from now
        return True
