"""One exception hierarchy for streamward, and the one map from Lua status codes to it."""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError

# Integer status codes returned as the first element of every script's reply.
OK = 1
DUPLICATE = 2
HELD = -1
NOT_OWNER = -2
STALE_TOKEN = -3
REPLICA_LOST = -4
SEQ_GAP = -5
BUSY = -6
NOT_FOUND = -7
TYPE_MISMATCH = -8
INBOX_FULL = -9
SESSION_LIMIT = -10
RATE_LIMITED = -11


class StreamwardError(Exception):
    """Base of every error streamward raises on purpose."""

    code = "streamward_error"


class InvalidId(StreamwardError, ValueError):
    """A session, project or replica id that does not match the id pattern."""

    code = "invalid_id"

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}: {reason} (got {value!r})")


class ScriptError(StreamwardError):
    """A script was called wrongly (key count) or returned an unknown status."""

    code = "script_error"


class LeaseError(StreamwardError):
    """Base of ownership errors."""

    code = "lease_error"


class LeaseHeld(LeaseError):
    """The lease is held by another owner."""

    code = "lease_held"

    def __init__(self, replica_id: str, incarnation: str, token: int, pttl_ms: int) -> None:
        self.replica_id = replica_id
        self.incarnation = incarnation
        self.token = token
        self.pttl_ms = pttl_ms
        super().__init__(f"lease held by {replica_id}/{incarnation} with token {token}")


class NotOwner(LeaseError):
    """The caller does not hold the lease it acted on."""

    code = "not_owner"


class StaleToken(LeaseError):
    """The caller's fencing token is older than the session's epoch: a newer owner exists."""

    code = "stale_token"

    def __init__(self, token: int, epoch: int) -> None:
        self.token = token
        self.epoch = epoch
        super().__init__(f"token {token} is stale: session epoch is {epoch}")


class ReplicaLost(LeaseError):
    """The replica lease is gone or names another incarnation."""

    code = "replica_lost"

    def __init__(self, replica_id: str, current_incarnation: str) -> None:
        self.replica_id = replica_id
        self.current_incarnation = current_incarnation
        who = current_incarnation or "nobody"
        super().__init__(f"replica lease of {replica_id} lost (now held by {who})")


class SeqGap(StreamwardError):
    """An ingest batch would leave a gap in the session's seq."""

    code = "seq_gap"

    def __init__(self, last_seq: int, seq: int) -> None:
        self.last_seq = last_seq
        self.seq = seq
        super().__init__(f"seq {seq} would leave a gap: last stored seq is {last_seq}")


class SessionBusy(StreamwardError):
    """multitask=reject and the session has an active or pending run."""

    code = "session_busy"

    def __init__(self, active_run_id: str, pending: int) -> None:
        self.active_run_id = active_run_id
        self.pending = pending
        super().__init__(f"session busy: active run {active_run_id or '-'}, {pending} pending")


class TypeMismatch(StreamwardError):
    """An invoke named a session type other than the one the session was created with."""

    code = "type_mismatch"

    def __init__(self, session_type: str, requested: str) -> None:
        self.session_type = session_type
        self.requested = requested
        super().__init__(f"session has type {session_type!r}, the invoke named {requested!r}")


class QuotaExceeded(StreamwardError):
    """Base of the quota refusals (HTTP 429): nothing was enqueued."""

    code = "quota_exceeded"
    retry_after_s = 1  # what the caller is told to wait; the API may set a better figure


class InboxFull(QuotaExceeded):
    """The session already holds its most pending inputs (the running one included)."""

    code = "inbox_full"

    def __init__(self, pending: int, limit: int) -> None:
        self.pending = pending
        self.limit = limit
        super().__init__(f"session inbox full: {pending} inputs pending, the limit is {limit}")


class SessionLimit(QuotaExceeded):
    """The input would create (or revive) a session in a project at its live-sessions limit."""

    code = "rate_limited"
    reason = "live_sessions"

    def __init__(self, session_id: str, live: int = -1, limit: int = 0) -> None:
        self.session_id = session_id
        self.live = live
        self.limit = limit
        super().__init__(
            f"project at its live-sessions limit ({limit}): session {session_id!r} not created"
        )


class RateLimited(QuotaExceeded):
    """The project's invokes-per-second bucket is empty."""

    code = "rate_limited"
    reason = "invokes_per_s"

    def __init__(self, retry_after_ms: int, tokens: float = 0.0) -> None:
        self.retry_after_ms = retry_after_ms
        self.tokens = tokens
        self.retry_after_s = max(1, -(-retry_after_ms // 1000))  # whole seconds, rounded up
        super().__init__(f"project invoke rate exceeded: retry in {retry_after_ms} ms")


# Redis answering but refusing writes, by error code: maxmemory reached under noeviction,
# a replica or demoted master, failing RDB saves (stop-writes-on-bgsave-error),
# min-replicas-to-write not met, a replica cut from its master. Transient from a caller's
# point of view (503 + Retry-After), unlike a bug's ResponseError.
WRITE_REFUSALS = {
    "OOM": "out_of_memory",
    "READONLY": "read_only",
    "MISCONF": "persistence_failing",
    "NOREPLICAS": "not_enough_replicas",
    "MASTERDOWN": "master_down",
}


def write_refusal(exc: BaseException) -> str | None:
    """Why Redis refused a command it received (a ``WRITE_REFUSALS`` reason), or None when
    ``exc`` is not such a refusal."""
    if isinstance(exc, OutOfMemoryError):
        return WRITE_REFUSALS["OOM"]
    if isinstance(exc, ReadOnlyError):
        return WRITE_REFUSALS["READONLY"]
    if isinstance(exc, MasterDownError):
        return WRITE_REFUSALS["MASTERDOWN"]
    if not isinstance(exc, ResponseError):
        return None
    # redis-py strips the code only of the errors it maps; inside a script (Redis < 7) or a
    # discarded transaction (EXECABORT) the code follows a dash in the message
    text = str(exc)
    for code, reason in WRITE_REFUSALS.items():
        if text.startswith(code + " ") or f"-{code} " in text:
            return reason
    return None


def is_write_refusal(exc: BaseException) -> bool:
    """True when Redis *answered* and refused a write (``write_refusal`` names why).

    That is not a partition: Redis is reachable and nobody else can write either (a
    takeover needs writes too). Connection errors and timeouts are not write refusals.
    The one test every heartbeat (async loop or thread) classifies its failures with.
    """
    return write_refusal(exc) is not None


def status_error(script: str, reply: Sequence[object]) -> StreamwardError:
    """Map a non-success reply of ``script`` to its exception (the one place codes are read)."""
    head = reply[0] if reply else None
    if not isinstance(head, int | str | bytes):
        return ScriptError(f"{script} returned no status: {reply!r}")
    code = int(head)
    rest = [_text(x) for x in reply[1:]]
    if code == HELD:
        return LeaseHeld(rest[0], rest[1], int(rest[2]), int(rest[3]))
    if code == NOT_OWNER:
        holder = f" (held by {rest[0]}/{rest[1]} token {rest[2]})" if rest else ""
        return NotOwner(f"not the owner{holder}")
    if code == STALE_TOKEN:
        return StaleToken(-1, int(rest[0]))
    if code == REPLICA_LOST:
        return ReplicaLost("", rest[0] if rest else "")
    if code == SEQ_GAP:
        return SeqGap(int(rest[0]), int(rest[1]))
    if code == BUSY:
        return SessionBusy(rest[0], int(rest[1]))
    if code == NOT_FOUND:
        return NotOwner("no lease is held")
    if code == TYPE_MISMATCH:
        return TypeMismatch(rest[0], rest[1])
    if code == INBOX_FULL:
        return InboxFull(int(rest[0]), int(rest[1]))
    if code == SESSION_LIMIT:
        return SessionLimit(rest[0])
    if code == RATE_LIMITED:
        return RateLimited(int(rest[0]), float(rest[1]))
    return ScriptError(f"{script} returned unknown status {code}: {reply!r}")


def _text(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
