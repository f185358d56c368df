"""The session actor: one per owned session, it runs the session's inbox in order."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from orjson import Fragment
from redis.exceptions import RedisError

from streamward.core.backoff import backoff_s
from streamward.core.contract import TERMINAL_STATUSES
from streamward.lua.errors import StaleToken
from streamward.lua.inbox import InboxItem, InboxMeta, RawInboxEntry, RunState
from streamward.lua.leases import Lease
from streamward.lua.replies import InboxPeek
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.lua.work import StartNotice
from streamward.runner.admission import IdleSlot
from streamward.runner.config import RunnerSettings
from streamward.runner.context import RunContext
from streamward.runner.control import ActorControl
from streamward.runner.handlers import Run, drive, run_outcome
from streamward.runner.inbox import INBOX_WINDOW, announce_for, interrupt_waiting, next_input
from streamward.runner.lifecycle import Activation
from streamward.runner.metrics import Metrics
from streamward.runner.offloop import parse_input
from streamward.runner.owner_death import OwnerDeath, SessionState
from streamward.runner.poison import end_if_poison
from streamward.runner.release import mark_cut_run, release_session
from streamward.runner.shipper import Fenced, Shipper, ShipRejected, ShipStopped
from streamward.runner.started import announce, started_data

log = logging.getLogger("streamward.runner.actor")

HANDLER_STOP_WAIT_S = 1.0
DEADLINE_WAIT_TURNS = 100  # x 10 ms: a run waits this long for its lease to be decided


class ActorHost(Protocol):
    """What an actor needs from the replica: its session book (``sessions.SessionBook``)."""

    settings: RunnerSettings
    store: LeaseStore
    streams: Streams
    metrics: Metrics

    @property
    def replica_id(self) -> str: ...
    @property
    def incarnation(self) -> str: ...
    def make_shipper(self, actor: SessionActor, next_seq: int) -> Shipper: ...
    def forget_actor(self, actor: SessionActor) -> None: ...
    async def writable(self) -> None: ...


class SessionActor(ActorControl):
    """Owns one session lease: consumes its inbox, one run at a time, ships the transcript."""

    def __init__(self, host: ActorHost, lease: Lease, life: Activation) -> None:
        self.host, self.life = host, life  # life: the session host's activation (lifecycle.py)
        self.session, self.ref = lease.session, lease.session.ref
        self.token, self.incarnation = lease.token, lease.incarnation
        self.shipper: Shipper | None = None
        self.current: Run | None = None
        self.closing = False
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._state = SessionState()
        self._opened = False
        self._wake = asyncio.Event()
        self.idle = IdleSlot(self._wake)  # evictable while waiting out close_delay
        self._inbox_empty = False  # the last completeInput left no input: no read needed
        self._peeked: InboxPeek | None = None  # the next input, peeked with the last advance
        self._early_cancel = ""  # a cancel mail for a run not running yet (control.py)
        self._draining, self._interrupting = "", False
        self._cut_run: Run | None = None  # the run a drain timeout cut short
        self._interrupt_check: asyncio.Task[None] | None = None
        # a freshly claimed session with nothing to do is released at once (no close_delay)
        self._idle_since = float("-inf")
        # a route's idle_timeout (meta idle_timeout_ms) overrides the replica's close_delay
        self._close_delay_s = host.settings.close_delay_s

    def start(self) -> None:
        self.task = asyncio.create_task(self._main(), name=f"actor {self.ref}")

    # -- lifecycle ---------------------------------------------------------------------------

    async def _main(self) -> None:
        mode = "drop"
        try:
            try:
                mode = await self._serve()
            except asyncio.CancelledError:
                if not self._interrupting:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # our own cancel, handled: later timeouts must work
                mode = "interrupt"
            except ShipRejected as exc:
                log.error("session %s: %s", self.ref, exc)
                mode = "reject"
            except (ShipStopped, StaleToken) as exc:
                log.warning("session %s moved or replica fenced (%s): dropping it", self.ref, exc)
            except Exception:
                log.exception("session %s: actor failed", self.ref)
                mode = "error"
            self.closing = True
            if mode != "drop":
                await self.life.leave(mode)  # the host's passivate, before the release
                await self._leave(mode)
        except asyncio.CancelledError:
            pass  # dropped (possibly while leaving): nothing more may be written
        except Exception:
            log.exception("session %s: leaving failed", self.ref)
        finally:
            self.closing = True
            if self._interrupt_check is not None:
                self._interrupt_check.cancel()
            await self.life.leave("drop")  # dropped, or failed while leaving: lost
            if self.shipper is not None:
                await self.shipper.close()
            self.host.forget_actor(self)
            self.closed.set()
            self.idle.gone()

    async def _serve(self) -> str:
        """Run inputs until there is a reason to leave; returns that reason."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            if self._draining and not (self._peeked and self._peeked.announced):
                return self._draining  # (an input announced as started still runs)
            try:
                if self._inbox_empty:
                    # the last completeInput saw none left (a later input's mail wakes us)
                    self._inbox_empty = False
                    nxt = None
                else:
                    peeked, self._peeked = self._peeked, None
                    if peeked is None:  # (else cleared before the advance that peeked)
                        self._reading()  # before reading: a wake during it is not lost
                    if not self._opened:
                        await self._open()
                        self._opened = True
                    if self._state.dead:
                        return "dead"
                    r = self.host
                    poison_after = r.settings.poison_after_owners
                    nxt = await next_input(
                        r.store, r.streams, self.session, self._state, self.token, poison_after,
                        peeked, self._announce_as(),
                    )  # fmt: skip
                if nxt is not None:
                    await self.host.writable()  # a full Redis: start nothing until it has room
                if self._draining and not (nxt and self._state.head_announced == nxt[0].id):
                    return self._draining  # started leaving while reading: start nothing new
                if self._start_now and not await self._start_host():
                    return "activation_failed"
                if nxt is None:
                    if not await self._idle():
                        return "passivate"
                    continue
                if not self.life.active and not await self.life.start(self._complete):
                    return "activation_failed"
                await self._process(*nxt)
                self._idle_since = loop.time()
                attempt = 0
            except RedisError as exc:
                # keep the session through a Redis blip; a long outage fences the replica
                self._inbox_empty, self._peeked = False, None
                delay = backoff_s(attempt)
                attempt += 1
                log.warning("session %s: redis error (%s); retry in %.2fs", self.ref, exc, delay)
                await asyncio.sleep(delay)

    async def _open(self) -> None:
        """Set up shipping; finish the previous owner's broken run per ``on_owner_death``."""
        r = self.host  # the only writer reads the last seq once (with the meta: one trip)
        last_seq, meta = await r.streams.last_seq_and_meta(self.session)
        if self.shipper is None:
            self.shipper = self.life.shipper = r.make_shipper(self, last_seq + 1)
        if self._state.drop_until is not None:
            await self._owner_death().drop_inputs()  # resumed after a Redis error
            return
        self.life.meta = meta
        self._state.meta_exists = bool(meta)
        self._state.hold_until = meta.get("hold_until_id") or None
        self._close_delay_s = r.settings.session_close_delay_s(meta.get("idle_timeout_ms"))
        active = meta.get("active_run_id")
        if active:
            policy = meta.get("on_owner_death") or "restart"
            if policy == "drop" or not await self._ended_as_poison(active):
                await self._owner_death().interrupted(active, policy, meta)
        if self.life.stateless and not self.life.active:  # (lifecycle.py: free, infallible)
            await self.life.start(self._complete)

    async def _ended_as_poison(self, run_id: str, taken_down: int | None = None) -> bool:
        assert self.shipper is not None
        r = self.host
        args = (r.store, r.streams, r.metrics, self.session, self.shipper, self._complete)
        return await end_if_poison(*args, run_id, r.settings.poison_after_owners, taken_down)

    def _owner_death(self) -> OwnerDeath:
        assert self.shipper is not None
        return OwnerDeath(
            self.host.streams, self.session, self.shipper, self._state, self._complete
        )

    async def _idle(self) -> bool:
        """Wait for a wake; False when the session has been idle for ``close_delay``."""
        loop = asyncio.get_running_loop()
        while True:
            if self._draining:
                return True
            remaining = self._idle_since + self._close_delay_s - loop.time()
            if remaining <= 0:
                if await self.host.streams.attached_count(self.session) > 0:
                    self._idle_since = loop.time()  # a client is watching: stay
                    continue
                return False
            # evictable while it waits: no run, no runnable input (a queue hold has input)
            self.idle.since = self._idle_since if self._state.hold_until is None else None
            try:  # (wait_for, not a timeout scope: a scope's expiry cancels this task, and a
                await asyncio.wait_for(self._wake.wait(), remaining)  # drop then is skipped)
            except TimeoutError:
                continue
            finally:
                self.idle.since = None
            return not self.idle.requested  # evicted for waiting work: passivate (idle)

    # -- runs ------------------------------------------------------------------------------

    async def _process(
        self,
        meta: InboxMeta,
        raw: RawInboxEntry | None,
        cancel_reason: str | None,
        state: RunState | None,
    ) -> None:
        r = self.host
        assert self.shipper is not None
        if state is not None and state.status in TERMINAL_STATUSES:
            # the previous owner ended it but died before advancing the inbox
            await self._complete(meta, last=True)
            return
        if cancel_reason == "poison":  # owners died taking it (peekInbox counted them)
            await self._ended_as_poison(meta.run_id, r.settings.poison_after_owners)
            return
        if cancel_reason is not None:
            await self.shipper.put(meta.run_id, "run.cancelled", {"reason": cancel_reason})
            await self.shipper.flush()
            await self._complete(meta, last=True)
            await r.streams.clear_cancel(self.session, meta.run_id)
            r.metrics.runs.labels("cancelled").inc()
            return
        assert raw is not None, "peekInbox returns the head input in full"
        item = await parse_input(raw)  # only now, and off the loop when large
        attempt = (state.attempt or 1) + 1 if state is not None else 1
        with self.shipper.trace_run(item, attempt):  # tracing: docs/operations.md
            await self._execute(item, attempt)

    async def _execute(self, item: InboxItem, attempt: int) -> None:
        r = self.host
        shipper = self.shipper
        assert shipper is not None
        # never near the entry limit: the shipper would replace the whole entry, owner and all
        max_copy = min(r.settings.started_input_max_bytes, r.settings.ship_entry_max_bytes // 2)
        # the input as stored (JSON text): measured and copied, not serialised again
        started = started_data(r.replica_id, attempt, Fragment(item.input_json), max_copy)
        started_seq = await shipper.put(item.run_id, "run.started", started)
        st = self._state  # a notice when our take was recorded and the peek sent none
        mine = st.head_taken == item.id and self.life.can_write  # (not past the deadline)
        if item.starts_to and mine and st.head_announced != item.id:
            notice = StartNotice(self.ref, item.run_id, r.replica_id, self.token)
            announce(r.streams, item.starts_to, notice)  # the waiting invoke answers now
        ctx = RunContext(
            session_id=self.session.session_id,
            project=self.session.project,
            run_id=item.run_id,
            token=self.token,
            attempt=attempt,
            replica_id=r.replica_id,
            started_seq=started_seq,
            session=self.session,
            streams=r.streams,
            link=self.life,
        )
        run = Run(item, ctx)
        self.current = run
        early = self._early_cancel == item.run_id
        if early or self._may_interrupt:
            # a cancel, or an input that may interrupt, came between its start notice and now
            self._early_cancel = "" if early else self._early_cancel
            check = self.cancel_requested(item.run_id) if early else self._check_interrupt()
            self._interrupt_check = asyncio.create_task(check)
        r.metrics.runs_inflight.inc()
        run_t0 = time.monotonic()
        try:
            run.task = asyncio.create_task(self._drive(ctx, item), name=f"run {item.run_id}")
            try:
                await asyncio.wait({run.task})
            except asyncio.CancelledError:
                self._cut_run = run
                raise
            finally:
                if not run.task.done():
                    # the actor itself stops: the handler must not outlive it (bounded, in
                    # case a handler swallows the cancellation; its next output then fails)
                    run.task.cancel()
                    await asyncio.wait({run.task}, timeout=HANDLER_STOP_WAIT_S)
        finally:
            self.current = None
            r.metrics.runs_inflight.dec()
        failed = run.cancel_reason is None and not run.task.cancelled() and run.task.exception()
        if isinstance(failed, ShipStopped):
            raise failed  # the session moved or the replica fenced: nothing more to write
        etype, data, outcome = run_outcome(run.task, run.cancel_reason)
        if outcome == "failed":
            log.info("session %s: run %s failed: %s", self.ref, item.run_id, data["error"])
        await shipper.put(item.run_id, etype, data)
        await self._complete(item, last=True, fetch=True)  # (its entries stored first)
        if run.cancel_reason is not None:
            await r.streams.clear_cancel(self.session, item.run_id)
        r.metrics.runs.labels(outcome).inc()
        r.metrics.run_duration.labels(outcome).observe(time.monotonic() - run_t0)

    async def _drive(self, ctx: RunContext, item: InboxItem) -> int:
        """The handler, unless this owner's lease may have passed to another since its take:
        a replica paused past its deadline (SIGSTOP) resumes before its fence timer fires.
        Writes are fenced anyway; this keeps the handler's side effects (and a poison input's
        kill) to owners whose lease holds."""
        assert self.shipper is not None
        for _ in range(DEADLINE_WAIT_TURNS):
            if self.life.can_write:
                return await drive(self.life.run, ctx, item.input, self.shipper.put)
            # the fence timer is due: it fences (dropping this actor) or finds a late renewal
            await asyncio.sleep(0.01)
        raise Fenced(f"not running {item.run_id}: past the self-fencing deadline")

    async def _complete(self, item: InboxMeta, *, last: bool = False, fetch: bool = False) -> None:
        """Fenced inbox advance (StaleToken: the session moved). ``last``: with no input left the
        next read is skipped (the wake flag is cleared first: a later mail sets it again).
        ``fetch``: the run's entries are stored first and the next input is peeked in the
        same call (advanceInbox), for the next turn; through the ingest when the API can
        (ingestAdvance-7: the post of the run's last entries consumes the input)."""
        if last:
            self._reading()
        r, shipper = self.host, self.shipper
        if fetch and not self._draining:  # (a peek records a take: none when leaving)
            poison_after = r.settings.poison_after_owners
            announce = announce_for(self._state, self._announce_as(), poison_after)
            args = (item.id, INBOX_WINDOW, announce)
            # a drain landing during the post: it goes without the advance (no take recorded)
            staying = lambda: not self._draining  # noqa: E731
            peek = None if shipper is None else await shipper.flush(advance=args, still=staying)
            if peek is None and not self._draining:
                peek = await r.store.advance_inbox(self.session, self.token, *args)
            if peek is None:
                pending = await r.store.complete_input(self.session, self.token, item.id)
            else:
                self._peeked, pending = (peek if peek.metas else None), len(peek.metas)
        else:
            if fetch and shipper is not None:
                await shipper.flush()
            pending = await r.store.complete_input(self.session, self.token, item.id)
        if last and pending == 0:
            self._inbox_empty = True

    def _announce_as(self) -> str | None:
        """Our replica id while we run a runnable head at once (an activated host, not
        leaving): the inbox scripts may then publish its start notice (runner/inbox.py)."""
        return self.host.replica_id if self.life.active and not self._draining else None

    async def _interrupt_waiting(self, run: Run) -> bool:
        peek = await self.host.store.peek_inbox(self.session, INBOX_WINDOW, with_head=False)
        return interrupt_waiting(peek.metas, run.item.id)

    # -- leaving -----------------------------------------------------------------------------

    async def _leave(self, mode: str) -> None:
        """Mark a run cut by the drain timeout, release the lease, re-queue what is left."""
        r = self.host
        if mode == "interrupt" and self._cut_run is not None and self.shipper is not None:
            cut = self._cut_run.run_id
            await mark_cut_run(self.shipper, self.ref, cut, r.replica_id, self.token)
        owner = (r.replica_id, r.incarnation, self.token)
        await release_session(r.store, r.streams, self.session, owner, self._state, mode)
