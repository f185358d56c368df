"""How the replica steers a session actor: ``POST /v1/sessions/{id}/start`` and ``/stop``
as the actor sees them (mails ``start`` / ``stop``, or work with reason ``start``): activate
with no input and stay for ``close_delay``; or leave now, passivating with reason
``stopped`` (docs/runner.md); a drain, a drop, a drain timeout's interrupt; a new input's
wake-up, and a cancel or an interrupting input reaching the running run."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from streamward.lua.inbox import InboxMeta
from streamward.lua.keys import SessionKeys
from streamward.runner.admission import IdleSlot
from streamward.runner.handlers import Run
from streamward.runner.lifecycle import Activation

log = logging.getLogger("streamward.runner.actor")
# an input mail naming one of these modes never cuts the running run short (an interrupt's
# mail names its mode; a mail naming none, from an older API or a sweep, may be one)
NEVER_INTERRUPTS = frozenset({"enqueue", "reject"})


class ActorControl:
    """The control half of ``SessionActor`` (kept apart: the actor is long enough)."""

    session: SessionKeys
    ref: str
    task: asyncio.Task[None] | None
    closing: bool
    closed: asyncio.Event
    _interrupting: bool
    current: Run | None
    _interrupt_check: asyncio.Task[None] | None
    _early_cancel: str
    token: int
    life: Activation
    idle: IdleSlot
    _wake: asyncio.Event
    _idle_since: float
    # how the actor leaves once its run (if any) ends: "" = it serves, "drain", "stop"
    _draining: str
    _start_now: bool = False  # activate at the next turn, even with no input
    # an input that may interrupt was mailed since the last inbox read (reset by _reading)
    _may_interrupt: bool = False

    @property
    def running(self) -> bool:
        return self.current is not None

    @property
    def current_run_id(self) -> str:
        return self.current.run_id if self.current is not None else ""

    async def _complete(self, item: InboxMeta, *, last: bool = False, fetch: bool = False) -> None:
        raise NotImplementedError  # the actor's fenced inbox advance

    async def _interrupt_waiting(self, run: Run) -> bool:
        raise NotImplementedError  # the actor's look for an interrupting input

    def on_input(self, multitask: str = "") -> None:
        """New input may be waiting: wake up, and look for an interrupting one if running,
        unless the mail named a mode that never interrupts (``enqueue``, ``reject``): such an
        input waits for the inbox read that follows the run, which sees it (one script call
        and a loop turn less per input that arrives mid-run)."""
        self.wake()
        if multitask in NEVER_INTERRUPTS:
            return
        self._may_interrupt = True  # the run about to start looks for it (actor._execute)
        if self.current is not None and (
            self._interrupt_check is None or self._interrupt_check.done()
        ):
            self._interrupt_check = asyncio.create_task(self._check_interrupt())

    def request_cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the running run ``run_id``; the run ends ``run.cancelled`` with ``reason``."""
        run = self.current
        if run is None or run.run_id != run_id or run.task is None or run.task.done():
            return False
        if run.cancel_reason is None:
            log.info("session %s: cancelling run %s (%s)", self.ref, run_id, reason)
            run.cancel_reason = reason
            run.ctx.cancelled.set()
            run.task.cancel()
        return True

    async def _check_interrupt(self) -> None:
        run = self.current
        with contextlib.suppress(RedisError):
            if run is not None and await self._interrupt_waiting(run):
                self.request_cancel(run.run_id, "interrupt")

    async def cancel_requested(self, run_id: str) -> None:
        """A ``cancel`` mail for the running run (also sent for a ``multitask=interrupt`` input).
        One for a run not running yet is kept: its caller may have heard it started (a start
        notice comes before the run does), and the run checks for it when it starts."""
        run = self.current
        if run is None or run.run_id != run_id:
            self._early_cancel = run_id
            return
        interrupted = await self._interrupt_waiting(run)
        self.request_cancel(run_id, "interrupt" if interrupted else "cancel")

    def drain(self) -> None:
        """Finish the running run (if any), start nothing new, release the session."""
        self._draining = "drain"
        self._wake.set()

    def drop(self, why: str) -> None:
        """Stop at once without writing anything (the session is no longer ours to write)."""
        if self.task is not None and not self.task.done() and not self.task.cancelling():
            log.warning("dropping session %s (token %d): %s", self.ref, self.token, why)
            self.task.cancel()

    async def interrupt(self) -> None:
        """Drain timeout: cut the running run short, mark it interrupted, release, re-queue."""
        if self.task is not None and not self.task.done() and not self.closing:  # else leaving
            self._interrupting = True
            self.task.cancel()
        await self.closed.wait()

    def _reading(self) -> None:
        """Just before an inbox read: a wake, or an interrupting input, mailed during the
        read is kept for the next turn; what came before it, the read sees."""
        self._wake.clear()
        self._may_interrupt = False

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
