"""The key schema: every Redis key streamward uses is built here, and ids are validated here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamward.lua.errors import InvalidId

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,200}")
DEFAULT_PREFIX = "sw"
# session types name work streams (sw:work:<type>): short, no ':' (a type is one key segment)
TYPE_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_TYPE = "default"


def validate_id(field: str, value: object) -> str:
    """Return ``value`` if it is a valid id, else raise InvalidId naming ``field``."""
    if not isinstance(value, str):
        raise InvalidId(field, value, "must be a string")
    if not value:
        raise InvalidId(field, value, "must not be empty")
    if len(value) > 200:
        raise InvalidId(field, value[:40] + "...", f"is {len(value)} characters, at most 200")
    if ID_PATTERN.fullmatch(value) is None:
        bad = next(c for c in value if ID_PATTERN.fullmatch(c) is None)
        raise InvalidId(
            field, value, f"character {bad!r} not allowed; use letters, digits and . _ : -"
        )
    return value


def validate_type(value: object, field: str = "type") -> str:
    """Return ``value`` if it is a valid session type name, else raise InvalidId."""
    if not isinstance(value, str) or TYPE_PATTERN.fullmatch(value) is None:
        raise InvalidId(field, value, "must be 1-64 characters of letters, digits and . _ -")
    return value


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of one session; all share the hash tag ``{project/session_id}``."""

    project: str
    session_id: str
    lease: str
    epoch: str
    inbox: str
    log: str
    meta: str
    runs: str
    attached: str
    cancels: str
    history: str
    state: str  # a session host's saved snapshot (saveState-3)
    tag: str

    @property
    def ref(self) -> str:
        """The session reference ``project/session_id`` used in indexes and mail."""
        return f"{self.project}/{self.session_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.tag}:idem:{key}"


@dataclass(frozen=True, slots=True)
class ProjectIndexKeys:
    """One project's session indexes; all share the hash tag ``{project}`` (one slot), so a
    listing snapshot and the pruning script stay inside it on Cluster."""

    project: str
    created: str  # zset session_id -> created ms (never changes while listed)
    updated: str  # zset session_id -> last activity ms (ZADD GT)
    tag: str

    def snapshot(self, snapshot_id: str) -> str:
        """A listing's frozen copy of ``updated`` (sort=updated pages), with a TTL."""
        return f"{self.tag}:list:{snapshot_id}"


@dataclass(frozen=True, slots=True)
class QuotaKeys:
    """A project's quota keys (admitInvoke-2); they share the hash tag ``{project}``."""

    project: str
    bucket: str  # invokes-per-second token bucket: hash tokens, ts_ms
    live: str  # live sessions counted against the limit: zset ref -> counted ms


@dataclass(frozen=True, slots=True)
class ReplicaKeys:
    """Keys of one replica; they share the hash tag ``{replica_id}``."""

    replica_id: str
    lease: str
    leases: str
    mail: str


class Keys:
    """Builds keys under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise ValueError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self.replicas = f"{prefix}:replicas"
        self.work = f"{prefix}:work"
        self.sessions = f"{prefix}:sessions"
        self.watchdog = f"{prefix}:watchdog"
        self.routes = f"{prefix}:routes"
        self.sources = f"{prefix}:sources"
        # sessions that may have pending input: ref -> ms last known to need attention
        self.pending = f"{prefix}:pending"
        self.work_group = "runners"
        # every session type whose work stream was ever published to (metrics, admin)
        self.work_types = f"{prefix}:work:types"
        # the archiver's work set: session ref -> ms it is due for an archive pass
        self.archive_dirty = f"{prefix}:archive:dirty"
        # the sw:sessions score up to which sessions were fed into the work set
        self.archive_fed = f"{prefix}:archive:fed"
        # one archiver at a time runs the record's retention pass
        self.archive_retention = f"{prefix}:archive:retention"
        # set once the per-project session indexes hold every session of sw:sessions
        self.project_indexes_backfilled = f"{prefix}:sessions:backfilled"
        # callback outbox (lua/outbox.py): one hash tag, so its scripts are Cluster safe
        self.callbacks_tag = f"{prefix}:{{cb}}"
        # delivery id -> ms it is due (a claimed one: when its claim ends)
        self.callbacks_due = f"{self.callbacks_tag}:due"

    def work_for(self, session_type: str) -> str:
        """The work stream of one session type; the default type keeps ``sw:work``."""
        if session_type == DEFAULT_TYPE:
            return self.work
        return f"{self.work}:{validate_type(session_type)}"

    def session(self, project: str, session_id: str) -> SessionKeys:
        validate_id("project", project)
        validate_id("session_id", session_id)
        tag = f"{self.prefix}:{{{project}/{session_id}}}"
        return SessionKeys(
            project=project,
            session_id=session_id,
            lease=f"{tag}:lease",
            epoch=f"{tag}:epoch",
            inbox=f"{tag}:inbox",
            log=f"{tag}:log",
            meta=f"{tag}:meta",
            runs=f"{tag}:runs",
            attached=f"{tag}:attached",
            cancels=f"{tag}:cancels",
            history=f"{tag}:history",
            state=f"{tag}:state",
            tag=tag,
        )

    def project_index(self, project: str) -> ProjectIndexKeys:
        validate_id("project", project)
        tag = f"{self.prefix}:project:{{{project}}}"
        return ProjectIndexKeys(
            project=project,
            created=f"{tag}:sessions:created",
            updated=f"{tag}:sessions:updated",
            tag=tag,
        )

    def session_ref(self, ref: str) -> SessionKeys:
        """Keys for a ``project/session_id`` reference (as stored in indexes)."""
        project, sep, session_id = ref.partition("/")
        if not sep:
            raise InvalidId("session", ref, "expected project/session_id")
        return self.session(project, session_id)

    def archive_claim(self, ref: str) -> str:
        """An archiver's claim on one session's archive pass (SET NX PX)."""
        return f"{self.prefix}:archive:claim:{{{ref}}}"

    def callback_run(self, run_id: str) -> str:
        """A run's callback (url, events, project, session) as given at invoke."""
        return f"{self.callbacks_tag}:run:{validate_id('run_id', run_id)}"

    def callback_deliveries(self, run_id: str) -> str:
        """The delivery ids of one run's callback, oldest first."""
        return f"{self.callback_run(run_id)}:dl"

    def callback_delivery(self, delivery_id: str) -> str:
        """One delivery's record: body, url, state, attempts."""
        return f"{self.callbacks_tag}:d:{validate_id('delivery_id', delivery_id)}"

    def quota(self, project: str) -> QuotaKeys:
        validate_id("project", project)
        tag = f"{self.prefix}:quota:{{{project}}}"
        return QuotaKeys(project=project, bucket=f"{tag}:bucket", live=f"{tag}:live")

    def starts_channel(self, instance: str) -> str:
        """The pub/sub channel one API process hears its detached invokes' run starts on (a
        channel, not a key: no slot, any node of a deployment delivers it)."""
        validate_id("instance", instance)
        return f"{self.prefix}:starts:{instance}"

    def replica(self, replica_id: str) -> ReplicaKeys:
        validate_id("replica_id", replica_id)
        tag = f"{self.prefix}:replica:{{{replica_id}}}"
        return ReplicaKeys(
            replica_id=replica_id, lease=tag, leases=f"{tag}:leases", mail=f"{tag}:mail"
        )


def binding_key(keys: Keys, project: str, route_id: str, key_hash: str) -> str:
    """The key binding an event key of a route to its current session generation."""
    validate_id("project", project)
    validate_id("route_id", route_id)
    return f"{keys.prefix}:{{{project}/{route_id}/{key_hash}}}:binding"


def delivery_key(keys: Keys, project: str, source: str, delivery_hash: str) -> str:
    """The claim (then the stored answer) of one webhook delivery, for its dedupe window."""
    validate_id("project", project)
    validate_id("source", source)
    return f"{keys.prefix}:{{{project}/{source}}}:delivery:{delivery_hash}"


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes (the first non-empty ``{...}``, else the key)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
