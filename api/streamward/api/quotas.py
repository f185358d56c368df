"""Quotas on the enqueue path: a session's pending inputs, a project's live sessions and
invokes per second (docs/api.md#quotas).

Cost: the per-session limit is checked inside ``enqueueInput-5`` (no extra call). The
project limits live in the project's keys (``sw:quota:{P}:*``, another slot than the
session's on Cluster), checked by ``admitInvoke-2`` just before the enqueue: one small extra
round trip, only for a project that has a project limit configured (none by default); on
Cluster it overlaps the pending-index ZADD the enqueue makes first there anyway.
An admitted invoke whose enqueue is refused (busy, type mismatch, inbox full, live-sessions
limit) gets its token back; an idempotent repeat counts as an invoke (it costs the API and
Redis the same work).
"""

from __future__ import annotations

import asyncio
import collections
import math
from dataclasses import dataclass

from streamward.api.config import ProjectQuota, Settings
from streamward.api.metrics import ApiMetrics
from streamward.api.tokens import TokenConfigError, build_table
from streamward.lua import errors as E
from streamward.lua.keys import DEFAULT_TYPE, SessionKeys
from streamward.lua.quotas import QuotaCalls
from streamward.lua.replies import Admission
from streamward.lua.store import Enqueued, LeaseStore
from streamward.lua.streams import Streams

# rejection reasons (the metric's label values and the problem's ``reason``)
REASONS = ("inbox_full", "live_sessions", "invokes_per_s")
OTHER_PROJECT = "other"  # the metric label of a project the settings do not name


@dataclass(frozen=True, slots=True)
class Limits:
    """One project's effective limits; 0 = unlimited."""

    max_pending: int
    max_live: int
    rate_per_s: float
    burst: int

    @property
    def project_checked(self) -> bool:
        """Whether an invoke needs the project's admission call at all."""
        return self.max_live > 0 or self.rate_per_s > 0


def resolve_limits(settings: Settings, project: str) -> Limits:
    """Defaults, overridden field by field by ``QUOTAS_BY_PROJECT[project]``."""
    o = settings.quotas_by_project.get(project) or ProjectQuota()

    def pick(override: float | None, default: float | None) -> float:
        value = override if override is not None else default
        return value or 0

    rate = pick(o.invokes_per_s, settings.invokes_per_s)
    burst = int(pick(o.invokes_burst, settings.invokes_burst))
    if rate > 0 and burst < 1:
        burst = max(1, math.ceil(rate))  # one second's worth
    return Limits(
        max_pending=int(pick(o.max_pending_inputs, settings.max_pending_inputs)),
        max_live=int(pick(o.max_live_sessions, settings.max_live_sessions)),
        rate_per_s=float(rate),
        burst=burst,
    )


def known_projects(settings: Settings) -> list[str]:
    """Projects the settings name (tokens, overrides; ``default`` without tokens): the only
    values the quota metrics label with, so their series stay bounded by configuration."""
    try:
        # every token setting: hashed scoped tokens, their file, the legacy ones
        tokens = build_table(settings).projects
    except TokenConfigError:  # the API refuses to start on it; name what the env says
        tokens = frozenset(settings.api_tokens.values())
    names = set(tokens) | set(settings.quotas_by_project)
    if not (settings.api_tokens or settings.tokens or settings.tokens_file):
        names.add("default")
    return sorted(names)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A project's admission for one invoke: its limits, and the admission call's answer
    (None: the project has no project limit, nothing was called)."""

    project: str
    limits: Limits
    admission: Admission | None

    @property
    def may_create(self) -> bool:
        return self.admission is None or self.admission.may_create


class Quotas:
    """The limits of each project (resolved once), admission around the enqueue, and the
    rejection counters."""

    def __init__(self, settings: Settings, calls: QuotaCalls, metrics: ApiMetrics | None) -> None:
        self.settings = settings
        self.calls = calls
        self.metrics = metrics
        self._limits: dict[str, Limits] = {}
        self._known = frozenset(known_projects(settings))
        # refusals answered by this process since it started: (project, reason) -> count
        self.rejections: collections.Counter[tuple[str, str]] = collections.Counter()

    def limits(self, project: str) -> Limits:
        got = self._limits.get(project)
        if got is None:
            got = self._limits[project] = resolve_limits(self.settings, project)
        return got

    def label(self, project: str) -> str:
        """The metric label of ``project``: itself when the settings name it, else "other"."""
        return project if project in self._known else OTHER_PROJECT

    def count_rejection(self, project: str, reason: str) -> None:
        # keyed by callers' projects (each from a configured token): bounded by configuration
        self.rejections[(project, reason)] += 1
        m = self.metrics
        if m is not None:
            if m.quota_by_project:
                m.quota_rejections.labels(reason, self.label(project)).inc()
            else:
                m.quota_rejections.labels(reason).inc()

    async def enqueue(
        self,
        store: LeaseStore,
        sk: SessionKeys,
        run_id: str,
        input_json: str,
        *,
        multitask: str = "enqueue",
        idempotency_key: str | None = None,
        idempotency_ttl_ms: int = 24 * 3600 * 1000,
        source: str = "invoke",
        session_type: str = "",
        default_type: str = DEFAULT_TYPE,
        admitted: Ticket | None = None,
        predict_mail: bool = False,
        traceparent: str = "",
        starts_to: str = "",
    ) -> Enqueued:
        """``LeaseStore.enqueue`` under the project's and the session's limits (``admitted``:
        the project's admission, taken by the caller before writes of its own).

        Raises RateLimited (the project's bucket is empty), SessionLimit (a new session in a
        project at its live-sessions limit), InboxFull, or the enqueue's own refusals; in
        every case nothing was appended and an admission's token was given back.
        """
        indexed = False
        if admitted is not None:
            ticket = admitted
        elif store.cluster and self.limits(sk.project).project_checked:
            # Cluster: the enqueue's pending-index ZADD is a round trip of its own there
            # (another slot); overlap the admission with it. A refused admission leaves an
            # index entry with no input: the liveness sweep prunes it, as for any refusal
            got, zadd = await asyncio.gather(
                self.admit(sk), store.index_pending(sk), return_exceptions=True
            )
            if isinstance(got, BaseException):
                raise got
            if isinstance(zadd, BaseException):
                await self.refund(got)
                raise zadd
            ticket, indexed = got, True
        else:
            ticket = await self.admit(sk)
        lim = ticket.limits
        try:
            return await store.enqueue(
                sk,
                run_id,
                input_json,
                multitask=multitask,
                idempotency_key=idempotency_key,
                idempotency_ttl_ms=idempotency_ttl_ms,
                source=source,
                session_type=session_type,
                default_type=default_type,
                max_pending=lim.max_pending,
                may_create=ticket.may_create,
                indexed=indexed,
                predict_mail=predict_mail,
                traceparent=traceparent,
                starts_to=starts_to,
            )
        except (E.QuotaExceeded, E.SessionBusy, E.TypeMismatch) as exc:
            await self.refund(ticket)  # nothing appended: no invoke spent
            if isinstance(exc, E.SessionLimit):
                raise self.refuse_creation(ticket, sk.session_id) from None
            if isinstance(exc, E.InboxFull):
                exc.retry_after_s = self.settings.quota_retry_after_s
                self.count_rejection(sk.project, "inbox_full")
            raise

    async def admit(self, sk: SessionKeys) -> Ticket:
        """The project's admission for one invoke of ``sk`` (no call without a project
        limit). Raises RateLimited."""
        lim = self.limits(sk.project)
        if not lim.project_checked:
            return Ticket(sk.project, lim, None)
        try:
            adm = await self.calls.admit(
                sk, rate_per_s=lim.rate_per_s, burst=lim.burst, max_live=lim.max_live
            )
        except E.RateLimited:
            self.count_rejection(sk.project, "invokes_per_s")
            raise
        return Ticket(sk.project, lim, adm)

    async def admit_before_writes(self, streams: Streams, sk: SessionKeys) -> Ticket:
        """``admit``, for a caller that writes the session's meta before its enqueue (event
        routing): a project at its live-sessions limit refuses a session that does not
        exist yet here, before that write, instead of in the enqueue after it."""
        ticket = await self.admit(sk)
        if not ticket.may_create:
            meta = await streams.meta(sk)
            if not meta.get("created_ms") or meta.get("delete_after_ms"):
                await self.refund(ticket)
                raise self.refuse_creation(ticket, sk.session_id)
        return ticket

    async def refund(self, ticket: Ticket) -> None:
        """Give an admitted invoke's token back (it appended nothing)."""
        lim = ticket.limits
        if ticket.admission is not None and lim.rate_per_s > 0:
            project = ticket.project
            await self.calls.refund(project, rate_per_s=lim.rate_per_s, burst=lim.burst)

    def refuse_creation(self, ticket: Ticket, session_id: str) -> E.SessionLimit:
        """The live-sessions refusal for a session known to be new (counted, with figures)."""
        adm = ticket.admission
        exc = E.SessionLimit(session_id)
        exc.live = adm.live if adm is not None and adm.live is not None else -1
        exc.limit = ticket.limits.max_live
        exc.retry_after_s = self.settings.quota_retry_after_s
        self.count_rejection(ticket.project, "live_sessions")
        return exc

    async def count_new(self, sk: SessionKeys, enq: Enqueued) -> None:
        """Count a session the enqueue created or revived as live (one ZADD NX; a session
        the admission reserved is counted already, NX keeps that)."""
        if enq.created or enq.revived:
            await self.calls.count_live(sk, enq.enqueued_ms or 0)
