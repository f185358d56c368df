"""Session hosts: the ``Session`` base class, its contexts, and one activation's lifecycle.

A host instance lives for one *activation*: from the moment this replica starts owning the
session (``activate``) to the moment it stops (``passivate``, exactly once). The actor
(``actor.py``) drives it; every way out of an ownership goes through
``Activation.passivate``, which runs the hook at most once (docs/runner.md, "Writing a
session host").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson
from redis.exceptions import RedisError

from streamward.core.contract import RUN_MERGED, TERMINAL_STATUSES
from streamward.lua.errors import NotOwner, StaleToken
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import LogEntry, Streams
from streamward.runner.activation import record_failure
from streamward.runner.archive_reads import ArchiveReads
from streamward.runner.context import (
    Handler,
    RunContext,
    SessionLost,
    StateTooLarge,
    read_history,
)
from streamward.runner.inbox import INBOX_WINDOW
from streamward.runner.shipper import Shipper
from streamward.runner.started import started_data

log = logging.getLogger("streamward.runner.lifecycle")

ActivationReason = Literal["new", "rehydrate", "takeover", "handoff"]
PassivateReason = Literal["idle", "drain", "stopped", "deleted", "reset", "lost"]
# how each way an actor leaves passivates the host (deleted / reset are read from meta on top)
PASSIVATE_REASON: dict[str, PassivateReason] = {
    "passivate": "idle",
    "dead": "idle",
    "drain": "drain",
    "stop": "stopped",  # POST /v1/sessions/{id}/stop
    "interrupt": "drain",
    "reject": "lost",
    "error": "lost",
    "drop": "lost",
}
PASSIVATE_STOP_WAIT_S = 1.0


class Session:
    """Base class of a session host: one instance per activation, its attributes are the live
    session. Override ``run`` (an async generator) and, when needed, the two hooks."""

    async def activate(self, ctx: SessionContext) -> None:
        """This replica starts owning the session; no run starts before this returns."""

    def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        """One input: yield JSON-serialisable outputs (write it as ``async def ... yield``)."""
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")

    async def passivate(self, ctx: SessionContext, reason: str) -> None:
        """The ownership ends (``reason``: idle, drain, stopped, deleted, reset, lost); called
        once."""


class FunctionHost(Session):
    """A function handler as a stateless host: no hooks, no state read, no meta writes."""

    hosted = False

    def __init__(self, fn: Handler) -> None:
        self.fn = fn

    def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        return self.fn(ctx, input)


HostFactory = Callable[[], Session]
HandlerSpec = Handler | type[Session]


class _FunctionHosts:
    """A function handler's host factory: its hosts are stateless (``FunctionHost``)."""

    def __init__(self, fn: Handler) -> None:
        self.fn = fn

    def __call__(self) -> Session:
        return FunctionHost(self.fn)


def host_factory(spec: HandlerSpec) -> HostFactory:
    """A ``Session`` subclass makes one instance per activation; a function is wrapped."""
    if isinstance(spec, type) and issubclass(spec, Session):
        return spec
    return _FunctionHosts(cast(Handler, spec))


class ActivationError(Exception):
    """The host's ``activate`` raised (the cause is chained)."""


@dataclass
class SessionContext:
    """What ``activate`` and ``passivate`` know: who owns the session, why, its last state."""

    session_id: str
    project: str
    replica_id: str
    token: int
    reason: ActivationReason
    state: Any  # the last saved snapshot, or None
    session: SessionKeys = field(repr=False)
    streams: Streams = field(repr=False)
    activation: Activation = field(repr=False)
    # a new generation knows it was reset (docs/routing.md): why, and the generation before
    reset_reason: str | None = None  # idle | daily | timeout | manual | dead
    previous_session_id: str | None = None
    # below Redis's hot tail (the record on): the API's transcript page; None: Redis alone
    archive: ArchiveReads | None = field(default=None, repr=False)

    @property
    def can_write(self) -> bool:
        """False once this activation lost the session: writes raise ``SessionLost``."""
        return self.activation.can_write

    async def save_state(self, obj: Any) -> None:
        """Store ``obj`` (JSON) as the session's snapshot: fenced, atomic, one round trip."""
        await self.activation.save_state(obj)

    async def transcript(self, after_seq: int = 0, limit: int = 1000) -> list[LogEntry]:
        """Transcript entries with ``seq > after_seq``, oldest first, at most ``limit``."""
        out: list[LogEntry] = []
        async for entry in self.history(after_seq):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def history(self, after_seq: int = 0, page: int = 200) -> AsyncIterator[LogEntry]:
        """Iterate the whole transcript from ``after_seq``, oldest first."""
        return read_history(self.streams, self.session, after_seq, page, None, self.archive)


def activation_reason(taken_over: bool, meta: dict[str, str]) -> ActivationReason:
    """Why this activation happens, from the claim and the session's meta history.

    ``hosted_by`` is written at every activation and ``released_by`` cleared; a clean
    release (idle, drain, failed activation) records itself in ``released_by``. So a
    previous activation that never released (killed, fenced, lease expired) is a takeover
    even when its lease expired before anyone took it over."""
    if taken_over:
        return "takeover"
    if not meta.get("hosted_by"):
        return "new"
    released = meta.get("released_by", "")
    if not released:
        return "takeover"
    return "handoff" if released == "drain" else "rehydrate"


class Activation:
    """One ownership of one session by this replica: the host instance, its context, the
    fenced state writer, pending inputs, and the passivate-once guard."""

    def __init__(
        self,
        factory: HostFactory,
        *,
        store: LeaseStore,
        streams: Streams,
        session: SessionKeys,
        owner: tuple[str, str, int],  # replica id, incarnation, token
        replica_can_write: Callable[[], bool],
        state_max_bytes: int,
        passivate_timeout_s: float,
        activation_max_failures: int,
        input_max_bytes: int,  # run.merged copies an input up to this, like run.started
        taken_over: bool,
        archive: ArchiveReads | None = None,
    ) -> None:
        self.factory = factory
        self.archive = archive
        self.store = store
        self.streams = streams
        self.session = session
        self.owner = owner
        self.replica_can_write = replica_can_write
        self.state_max_bytes = state_max_bytes
        self.passivate_timeout_s = passivate_timeout_s
        self.activation_max_failures = activation_max_failures
        self.input_max_bytes = input_max_bytes
        self.taken_over = taken_over
        self.host: Session | None = None
        self.ctx: SessionContext | None = None
        self.meta: dict[str, str] = {}  # read by the actor at open: the activation history
        self.active = False
        self.lost = False
        self._passivated = False
        # set by the actor once it ships: pending inputs write run.merged and advance the inbox
        self.shipper: Shipper | None = None
        self.complete: Callable[[InboxItem], Awaitable[None]] | None = None

    @property
    def stateless(self) -> bool:
        """A function handler's: activating it reads and writes nothing and cannot fail, so
        the actor activates it as soon as the session is open (its first inbox read may then
        publish the start notice itself: one hop sooner for a session's first invoke)."""
        return isinstance(self.factory, _FunctionHosts)

    @property
    def hosted(self) -> bool:
        """A class host (a function handler's adapter costs no Redis call at all)."""
        return self.host is not None and getattr(self.host, "hosted", True)

    @property
    def can_write(self) -> bool:
        return not self.lost and self.replica_can_write()

    # -- activate ---------------------------------------------------------------------------

    async def start(self, complete: Callable[[InboxItem], Awaitable[None]]) -> bool:
        """Activate before the first run (the shipper is set); False when ``activate``
        raised: recorded, backed off, the actor then releases the session."""
        assert self.shipper is not None, "activate before the session is open"
        self.complete = complete
        try:
            await self.activate(self.meta)
            return True
        except ActivationError as exc:
            await record_failure(
                self, exc, self.meta, self.shipper, complete, self.activation_max_failures
            )
            return False

    async def activate(self, meta: dict[str, str]) -> None:
        """Build the host and call its ``activate``; raises ActivationError when it raises
        (Redis errors of our own reads and writes propagate as they are: the actor retries)."""
        host = self.host = self.factory()
        reason = activation_reason(self.taken_over, meta)
        state: Any = None
        if self.hosted:
            saved = await self.streams.read_state(self.session)
            state = saved.value() if saved is not None else None
            if meta:  # before the hook: dying inside it makes the next activation a takeover
                sig = "|".join(str(x) for x in self.owner)
                await self.streams.set_meta(self.session, hosted_by=sig, released_by="")
        self.ctx = SessionContext(
            session_id=self.session.session_id,
            project=self.session.project,
            replica_id=self.owner[0],
            token=self.owner[2],
            reason=reason,
            state=state,
            session=self.session,
            streams=self.streams,
            activation=self,
            reset_reason=meta.get("reset_reason") or None,
            previous_session_id=meta.get("previous_session_id") or None,
            archive=self.archive,
        )
        try:
            await host.activate(self.ctx)
        except Exception as exc:
            raise ActivationError(str(exc) or type(exc).__name__) from exc
        self.active = True
        if self.hosted:
            log.info("session %s activated (%s)", self.session.ref, reason)
            if meta.get("activation_failures", "0") != "0":
                await self.streams.set_meta(self.session, activation_failures=0)

    def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        assert self.host is not None, "run before activate"
        return self.host.run(ctx, input)

    # -- writes -----------------------------------------------------------------------------

    async def save_state(self, obj: Any) -> None:
        if not self.can_write:
            raise SessionLost(f"session {self.session.ref}: this activation can no longer write")
        try:
            data = orjson.dumps(obj)
        except TypeError as exc:
            raise TypeError(f"save_state: the state is not JSON-serialisable: {exc}") from None
        if len(data) > self.state_max_bytes:
            raise StateTooLarge(
                f"save_state: the state is {len(data)} bytes, the limit is "
                f"{self.state_max_bytes} (STREAMWARD_STATE_MAX_BYTES)"
            )
        try:
            await self.store.save_state(self.session, self.owner, data.decode())
        except (StaleToken, NotOwner) as exc:
            self.lost = True
            raise SessionLost(
                f"session {self.session.ref}: state refused, a newer owner exists ({exc})"
            ) from exc

    async def pending_inputs(self, run_id: str) -> AsyncIterator[Any]:
        """Take the inputs queued behind ``run_id`` now: each ends ``run.merged`` (with its
        input, so a restart of ``run_id`` can find it in the transcript), is completed
        (fenced) and is yielded. Stops at an interrupting input: that one cancels the run."""
        shipper, complete = self.shipper, self.complete
        if shipper is None or complete is None or not self.can_write:
            return
        for item in await self.streams.read_inbox(self.session, count=INBOX_WINDOW):
            if item.run_id == run_id:
                continue
            if item.multitask == "interrupt":
                return
            if await self.streams.cancel_requested(self.session, item.run_id):
                continue  # the actor answers it run.cancelled in its turn
            rs = await self.streams.run_state(self.session, item.run_id)
            if rs is not None and rs.status in TERMINAL_STATUSES:
                continue  # ended already (e.g. merged before a failover); completed later
            copy = started_data("", 0, item.input, self.input_max_bytes)
            data = {"into_run_id": run_id, **{k: v for k, v in copy.items() if "input" in k}}
            await shipper.put(item.run_id, RUN_MERGED, data)
            await shipper.flush()
            await complete(item)
            yield item.input

    # -- passivate --------------------------------------------------------------------------

    async def end_reason(self, default: PassivateReason) -> PassivateReason:
        """``deleted`` / ``reset`` when the session was retired under us, else ``default``."""
        if not self.active or not self.hosted or self._passivated:
            return default
        try:
            meta = await asyncio.wait_for(self.streams.meta(self.session), 1.0)
        except (RedisError, OSError, TimeoutError):
            return default
        status = meta.get("status")
        # the delete's force release marks meta in the same script that fences us, before it
        # mails us; the status follows later in another call
        released = meta.get("force_released_token") == str(self.owner[2])
        if status == "deleted" or (released and meta.get("release_kind") == "deleted"):
            return "deleted"
        if status == "expired":
            return "reset"
        return default

    async def leave(self, mode: str) -> None:
        """The one way out of an ownership: the actor calls it with how it leaves (its
        ``_serve`` result, or ``drop``) before releasing; an eviction leaves as ``passivate``
        (idle). Passivates once per activate; later calls are no-ops."""
        try:
            await self.passivate(await self.end_reason(PASSIVATE_REASON.get(mode, "idle")))
        except Exception:
            if mode != "drop":
                raise  # the actor logs it ("leaving failed") and still passivates(lost)
            log.exception("session %s: passivate(lost) failed", self.session.ref)

    async def passivate(self, reason: PassivateReason) -> None:
        """Call the host's ``passivate`` once per successful ``activate``, under the
        deadline; the hook runs in a task of its own so a stuck hook is cancelled."""
        if not self.active or self._passivated or self.host is None or self.ctx is None:
            return
        self._passivated = True
        if reason == "lost":
            self.lost = True
        hook = asyncio.create_task(
            self.host.passivate(self.ctx, reason), name=f"passivate {self.session.ref}"
        )
        try:
            done, _ = await asyncio.wait({hook}, timeout=self.passivate_timeout_s)
        except asyncio.CancelledError:
            hook.cancel()  # the actor itself is cut short: the hook must not outlive it
            raise
        if not done:
            hook.cancel()
            log.warning(
                "session %s: passivate(%s) took longer than %.1fs: cancelled",
                self.session.ref, reason, self.passivate_timeout_s,
            )  # fmt: skip
            await asyncio.wait({hook}, timeout=PASSIVATE_STOP_WAIT_S)
            return
        if not hook.cancelled() and (exc := hook.exception()) is not None:
            log.error("session %s: passivate(%s) raised", self.session.ref, reason, exc_info=exc)
        elif self.hosted:
            log.info("session %s passivated (%s)", self.session.ref, reason)
        if reason in ("idle", "drain", "stopped") and self.hosted and self.can_write:
            # the next activation tells a handoff from a rehydrate by this
            await self.streams.set_meta(self.session, released_by=reason)
