"""Typed replies of the Lua scripts, and the helpers that read a raw reply into them.

A script reply arrives as nested lists of int / str (bytes on a non-decoding client).
``lua/scripts.py`` reads each one here, so no caller ever indexes a raw reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamward.lua import errors as E
from streamward.lua.errors import ScriptError
from streamward.lua.inbox import InboxMeta, RawInboxEntry, RunState

# renewLeases-n: per key, what happened (0 = gone, then the status codes)
RenewOutcome = Literal["renewed", "expired", "not_owner", "stale_token", "unknown"]


def as_str(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def as_int(x: object) -> int:
    if isinstance(x, int | str | bytes):
        return int(x)
    raise ScriptError(f"expected an integer in a script reply, got {x!r}")


def as_list(x: object) -> list[object]:
    if isinstance(x, list):
        return list(x)
    raise ScriptError(f"expected a list as script reply, got {x!r}")


def pairs(flat: object) -> dict[str, str]:
    """A stream entry's flat [field, value, ...] list (as a script returns it) as a dict."""
    it = iter(as_str(x) for x in as_list(flat))
    return dict(zip(it, it, strict=True))


def status(reply: Sequence[object]) -> int:
    """The status code every reply opens with."""
    if not reply:
        raise ScriptError("empty script reply")
    return as_int(reply[0])


@dataclass(frozen=True, slots=True)
class Registration:
    """registerReplica-1: Redis time of the registration, and the incarnation it replaced."""

    now_ms: int
    previous_incarnation: str


@dataclass(frozen=True, slots=True)
class Grant:
    """acquireLease-3 / takeoverLease-3 success: the lease is the caller's."""

    token: int
    acquired_ms: int
    fresh: bool  # False when the caller already held it (idempotent call)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """readLease-2 when a lease is held."""

    replica_id: str
    incarnation: str
    token: int
    acquired_ms: int
    renewed_ms: int
    pttl_ms: int
    epoch: int


@dataclass(frozen=True, slots=True)
class NoLease:
    """readLease-2 when no lease is held: only the fencing epoch."""

    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseRenewals:
    """renewLeases-n: Redis time and one outcome per key, in key order."""

    now_ms: int
    outcomes: list[RenewOutcome]


@dataclass(frozen=True, slots=True)
class ForceReleased:
    """forceRelease-4: who held the lease ("" / 0 when nobody) and the bumped epoch."""

    old_replica_id: str
    old_incarnation: str
    old_token: int
    new_epoch: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    """ingestEntries-5 success (ingestAdvance-7: ``peek`` holds its advanceInbox part)."""

    accepted: int
    duplicates: int
    last_seq: int
    # advanceInbox-5's reply past its status, JSON-ready (str and int lists): the API passes
    # it to the runner, which parses it with ``inboxscripts.peek_from_wire``
    peek: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """enqueueInput-5: appended to the inbox."""

    entry_id: str
    active_run_id: str  # "" when no run is active
    pending: int
    revived: bool
    log_last_id: str
    holder: tuple[str, str] | None  # (replica_id, incarnation) of the session lease
    session_type: str  # the session's type (meta ``type``), set when it was created
    created: bool = False  # this append created the session (its meta was new)


@dataclass(frozen=True, slots=True)
class DuplicateInput:
    """enqueueInput-5: the idempotency key already names ``run_id``; nothing appended."""

    run_id: str
    log_last_id: str


@dataclass(frozen=True, slots=True)
class InboxPeek:
    """peekInbox-5: the oldest pending inputs' metadata (oldest first), the first one's
    input in full when asked (``head``), its run state and cancel request."""

    metas: list[InboxMeta]
    head: RawInboxEntry | None
    state: RunState | None
    cancel_requested: bool
    owners: int = 0  # owners that took the head, the caller included (asked with a token)
    announced: bool = False  # the script published the head's start notice (asked to)


@dataclass(frozen=True, slots=True)
class LockClaim:
    """claimLock-1: whether the caller holds the lock, else who does and for how long."""

    held: bool
    owner: str = ""
    pttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class Binding:
    """bindSession-1: the session generation an event goes to."""

    session_id: str
    generation: int
    # due: a reset fell due; the caller decides busy (join) or quiet (rotate), see the script
    action: Literal["started", "queued", "due"]
    previous_session_id: str
    reason: (
        str  # why the previous generation ended (or is due): timeout | daily | idle | manual | dead
    )


_RENEW_OUTCOME: dict[int, RenewOutcome] = {
    E.OK: "renewed",
    0: "expired",
    E.NOT_OWNER: "not_owner",
    E.STALE_TOKEN: "stale_token",
}


def ok_reply(script: str, reply: Sequence[object], *codes: int) -> Sequence[object]:
    """``reply`` when its status is OK (or one of ``codes``); its exception otherwise."""
    if status(reply) not in (E.OK, *codes):
        raise E.status_error(script, reply)
    return reply


def parse_grant(script: str, raw: object) -> Grant:
    """acquireLease / takeoverLease reply; raises LeaseHeld."""
    r = ok_reply(script, as_list(raw))
    return Grant(as_int(r[1]), as_int(r[2]), as_int(r[3]) == 1)


def parse_renewals(raw: object) -> LeaseRenewals:
    r = as_list(raw)
    return LeaseRenewals(as_int(r[0]), [_RENEW_OUTCOME.get(as_int(x), "unknown") for x in r[1:]])


def parse_enqueued(raw: object) -> Queued | DuplicateInput:
    """enqueueInput reply; raises SessionBusy (multitask=reject) or TypeMismatch."""
    r = ok_reply("enqueueInput", as_list(raw), E.DUPLICATE)
    if status(r) == E.DUPLICATE:
        return DuplicateInput(as_str(r[1]), as_str(r[2]))
    holder = as_str(r[6])
    return Queued(
        entry_id=as_str(r[1]),
        active_run_id=as_str(r[2]),
        pending=as_int(r[3]),
        revived=as_int(r[4]) == 1,
        log_last_id=as_str(r[5]),
        holder=(holder, as_str(r[7])) if holder else None,
        session_type=as_str(r[8]),
        created=as_int(r[9]) == 1,
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """admitInvoke-2 (take): the project's quotas let the invoke through."""

    may_create: bool  # False: at the live-sessions limit, the enqueue may not create one
    reserved: bool  # this call counted the session as live (before the enqueue)
    tokens_left: float | None  # None: no rate limit
    live: int | None  # counted live sessions; None: no live-sessions limit


def parse_admission(raw: object) -> Admission:
    """admitInvoke take reply; raises RateLimited."""
    r = ok_reply("admitInvoke", as_list(raw))
    tokens = float(as_str(r[3]))
    live = as_int(r[4])
    return Admission(
        may_create=as_int(r[1]) == 1,
        reserved=as_int(r[2]) == 1,
        tokens_left=None if tokens < 0 else tokens,
        live=None if live < 0 else live,
    )


def parse_notified(raw: object) -> bool:
    """notifyReplica reply: delivered or not (the replica lease names another incarnation)."""
    return status(as_list(raw)) == E.OK
