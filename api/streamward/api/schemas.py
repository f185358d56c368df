"""HTTP schemas of the API and its Python client; the runners' ingest contract is shared
from ``streamward.core.contract`` and re-exported here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

# callbacks live in callbackschemas.py, re-exported here
from streamward.api.callbackschemas import CallbackSpec as CallbackSpec
from streamward.api.callbackschemas import DeliveryAttemptOut as DeliveryAttemptOut
from streamward.api.callbackschemas import DeliveryOut as DeliveryOut
from streamward.api.callbackschemas import RunDeliveries as RunDeliveries

# routes and events (event routing) live in routeschemas.py, re-exported here
from streamward.api.routeschemas import EventAction as EventAction
from streamward.api.routeschemas import EventRequest as EventRequest
from streamward.api.routeschemas import EventResult as EventResult
from streamward.api.routeschemas import EventSession as EventSession
from streamward.api.routeschemas import Multitask as Multitask
from streamward.api.routeschemas import OnOwnerDeath as OnOwnerDeath
from streamward.api.routeschemas import Route as Route
from streamward.api.routeschemas import RouteOutcomeError as RouteOutcomeError
from streamward.api.routeschemas import RoutePage as RoutePage
from streamward.api.routeschemas import RouteSession as RouteSession
from streamward.api.routeschemas import RouteTest as RouteTest
from streamward.api.routeschemas import RouteTestResult as RouteTestResult
from streamward.api.routeschemas import SessionReset as SessionReset
from streamward.api.routeschemas import SessionResetResult as SessionResetResult
from streamward.api.routeschemas import SessionType as SessionType
from streamward.core.contract import Id, Model
from streamward.core.contract import IngestBatchRequest as IngestBatchRequest
from streamward.core.contract import IngestBatchResult as IngestBatchResult
from streamward.core.contract import IngestEntry as IngestEntry
from streamward.core.contract import IngestRequest as IngestRequest
from streamward.core.contract import IngestResult as IngestResult
from streamward.core.jsonsafe import JSON_INT, SAFE_INT_MAX, JSONValue, Text

# running/queued for a new run; an idempotent repeat reports the run's current state
# tokens and seqs are Lua numbers in the scripts (IEEE doubles): exact up to 2^53-1 only
Token = Annotated[int, Field(ge=0, le=SAFE_INT_MAX), JSON_INT]
RunStatusName = Literal["running", "queued", "completed", "failed", "cancelled", "merged"]


# -- public ------------------------------------------------------------------------------


class InvokeRequest(Model):
    input: JSONValue = None
    mode: Literal["stream", "detached"] = "stream"
    idempotency_key: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    multitask: Multitask = "enqueue"
    # the session's type: set by the first input (else the route's or the default type);
    # naming another type later is 409 type_mismatch
    type: SessionType | None = None
    # signed completion callback: POST the run's named entries to a URL (docs/api.md)
    callback: CallbackSpec | None = None


class Owner(Model):
    replica_id: str
    token: int


class InvokeAccepted(Model):
    run_id: str
    session_id: str
    status: RunStatusName
    owner: Owner | None = None


class LogEntryOut(Model):
    """One transcript entry as served (NDJSON line, SSE data, transcript item)."""

    id: str
    seq: int
    type: str
    run_id: str
    session_id: str
    token: int
    data: Any = None
    ts: str


class OwnerDetail(Model):
    replica_id: str
    incarnation: str
    token: int
    acquired_at: str
    renewed_at: str
    expires_in_ms: int


class Liveness(Model):
    session_id: str
    alive: bool
    status: str
    owner: OwnerDetail | None = None
    pending: int
    attached: int
    active_run_id: str | None = None
    type: str | None = None  # the session's type
    # input waits and no live runner serves the session's type (status no_runner_for_type)
    waiting_for_type: str | None = None


class CancelRequest(Model):
    run_id: Id | None = None  # default: the active run


class DetachRequest(Model):
    connection_id: Annotated[Text, Field(max_length=200)] | None = None


class DetachResult(Model):
    session_id: str
    detached: int


class CancelResult(Model):
    session_id: str
    run_id: str
    status: Literal["cancelling"]


class SessionOut(Model):
    session_id: str
    project: str
    status: str
    created_at: str | None = None
    updated_at: str | None = None
    active_run_id: str | None = None
    last_seq: int = 0
    pending: int = 0
    transitions: int = 0
    owner: OwnerDetail | None = None
    delete_after: str | None = None
    # why it ended (expired / deleted / dead / passivated): idle | timeout | daily | manual | drop
    reason: str | None = None
    route_id: str | None = None
    session_key: str | None = None
    generation: int | None = None
    # a routed generation opened by a reset: the one before it and why it ended
    previous_session_id: str | None = None
    reset_reason: str | None = None  # idle | daily | timeout | manual | dead
    # not routed, after a reset: the transcript's entries after this seq are the new generation
    reset_after_seq: int | None = None
    # the session resource (POST / PATCH /v1/sessions): absent for sessions made by invoke
    title: str | None = None
    metadata: dict[str, Any] | None = None
    type: str | None = None  # the session's type


class SessionPage(Model):
    items: list[SessionOut]
    next_cursor: str | None = None


class TranscriptPage(Model):
    items: list[LogEntryOut]
    next_after: str | None = None


class SessionStateOut(Model):
    """A session host's last saved snapshot (``GET /v1/sessions/{id}/state``)."""

    session_id: str
    state: Any
    token: int  # the fencing token of the owner that saved it
    replica_id: str | None = None
    saved_at: str  # RFC 3339, Redis clock


# -- admin -------------------------------------------------------------------------------


class LeaseRef(Model):
    session_id: Id
    project: Id = "default"
    token: Token


class HeartbeatRequest(Model):
    replica_id: Id
    incarnation: Annotated[Text, Field(min_length=1, max_length=200)]
    leases: Annotated[list[LeaseRef], Field(max_length=10_000)] = []
    lease_ttl_ms: Annotated[int, Field(ge=1000, le=3_600_000), JSON_INT] = 60_000
    # when set, the replica lease is renewed first (409 replica_lost if it is gone)
    replica_ttl_ms: Annotated[int, Field(ge=500, le=600_000), JSON_INT] | None = None


class HeartbeatResult(Model):
    renewed: list[str]
    lost: list[str]
    reasons: dict[str, str] = {}  # lost session_id -> expired | not_owner | stale_token


class StreamDetachRequest(Model):
    replica_id: Id
    incarnation: Annotated[Text, Field(min_length=1, max_length=200)]
    session_id: Id
    project: Id = "default"
    token: Token


class StreamDetachResult(Model):
    session_id: str
    released: bool


class LockOut(Model):
    session_id: str
    project: str
    holder: str | None = None
    incarnation: str | None = None
    token: int | None = None
    epoch: int = 0
    transitions: int = 0
    acquired_at: str | None = None
    renewed_at: str | None = None
    expires_in_ms: int | None = None
    state: Literal["held", "orphaned", "free"]
    # runs of this session ended run.failed poison (they took down N owners in a row)
    poison_runs: int = 0
    last_poison_run_id: str | None = None


class LockPage(Model):
    items: list[LockOut]
    next_cursor: str | None = None


class OwnershipEvent(Model):
    """One ownership change: acquired, taken_over, released or force_released."""

    id: str
    event: str
    replica_id: str | None = None
    incarnation: str | None = None
    token: int = 0
    reason: str = ""
    at: str | None = None


class OwnershipHistory(Model):
    session_id: str
    project: str
    events: list[OwnershipEvent]  # newest first; the last ~200 are kept
    # whether the record (PostgreSQL) was asked for events older than Redis keeps: the live
    # page says where its ownership pane comes from
    record: bool = False


class ForceReleaseResult(Model):
    session_id: str
    before: LockOut
    after: LockOut


class ReplicaOut(Model):
    replica_id: str
    incarnation: str | None = None
    started_at: str | None = None
    last_heartbeat: str | None = None
    leases: int = 0
    in_flight: int = 0
    draining: bool = False
    state: Literal["ready", "draining", "dead"]
    host: str | None = None
    version: str | None = None
    types: list[str] = []  # the session types it serves


class DrainResult(Model):
    replica_id: str
    status: Literal["draining"]


class PendingInput(Model):
    """One input waiting in a session inbox (the running one included)."""

    id: str
    run_id: str
    source: str
    multitask: str
    enqueued_at: str | None = None


class RunOut(Model):
    """A run's latest recorded state."""

    run_id: str
    status: str
    token: int | None = None
    replica_id: str | None = None
    attempt: int | None = None
    updated_at: str | None = None


class LockDetail(Model):
    """Everything an SRE asks about one session's ownership (``streamward locks show``)."""

    lock: LockOut
    status: str | None = None
    holder_replica: ReplicaOut | None = None
    pending: int = 0
    pending_inputs: list[PendingInput] = []
    attached: int = 0
    active_run: RunOut | None = None
    last_entries: list[LogEntryOut] = []
    server_time: str


class Problem(Model):
    """RFC 9457 problem details with a stable machine-readable ``code``."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    code: str
    detail: str | None = None
