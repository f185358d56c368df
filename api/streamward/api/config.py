"""API settings from ``STREAMWARD_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamward.api.tokens import TokenSpec
from streamward.lua.config import RedisSettings


class ProjectQuota(BaseModel):
    """One project's quota overrides (``QUOTAS_BY_PROJECT``): an omitted field takes the
    default setting of the same name; 0 = unlimited for this project."""

    model_config = ConfigDict(extra="forbid")

    max_pending_inputs: Annotated[int | None, Field(ge=0)] = None
    max_live_sessions: Annotated[int | None, Field(ge=0)] = None
    invokes_per_s: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = None
    invokes_burst: Annotated[int | None, Field(ge=0)] = None


class Settings(RedisSettings, BaseSettings):
    """Everything the API reads from the environment; names match docs/architecture.md.

    Redis connection fields (``REDIS_MODE``, ``REDIS_URL``, ``SENTINELS``, TLS, ...) come from
    ``lua.client.RedisSettings``, shared with the runner.
    """

    model_config = SettingsConfigDict(env_prefix="STREAMWARD_", extra="ignore")

    key_prefix: str = "sw"
    # scoped tokens (api/tokens.py): hashed, several per project; STREAMWARD_TOKENS is a JSON
    # list of {"sha256", "project", "scopes", "name"}, TOKENS_FILE the same list in a file
    # (a mounted Secret). The two plaintext settings below map into the same table.
    tokens: list[TokenSpec] = []
    tokens_file: str | None = None
    # legacy: a plaintext token with the `admin` scope (project default)
    admin_token: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8700
    # legacy: plaintext token -> project, scopes sessions:run + sessions:view. With no token
    # here nor in TOKENS / TOKENS_FILE, /v1 needs none and every call is in project "default"
    api_tokens: dict[str, str] = {}
    start_timeout_s: Annotated[float, Field(ge=0)] = 10.0
    max_body_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    # a route's input_expr output, serialised, above this is not enqueued (input_too_large)
    route_input_max_bytes: Annotated[int, Field(ge=1)] = 256 * 1024
    # an invoke input as serialised JSON; over it: 413 input_too_large (events: per route)
    max_input_bytes: Annotated[int, Field(ge=1)] = 256 * 1024
    idempotency_ttl_s: Annotated[int, Field(ge=1)] = 86_400
    # the type of a new session whose first input (and route) names none
    default_type: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "default"
    # one blocked XREAD per open stream holds a connection: size the pool for many streams
    redis_max_connections: Annotated[int, Field(ge=4)] = 2000
    redis_pool_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    redis_socket_timeout_s: Annotated[float, Field(gt=1)] = 10.0
    # attached connections: registered with a TTL, refreshed while the stream is open
    attach_ttl_s: Annotated[float, Field(gt=0)] = 30.0
    attach_refresh_s: Annotated[float, Field(gt=0)] = 10.0
    # XREAD BLOCK slice: short so a detach, a disconnect or shutdown is noticed quickly
    tail_block_ms: Annotated[int, Field(ge=10, le=1000)] = 1000
    sse_keepalive_s: Annotated[float, Field(gt=0)] = 15.0
    retry_after_s: Annotated[int, Field(ge=1)] = 1
    log_level: str = "warning"
    # expired / deleted sessions: every key is deleted this long after (GET says when)
    retention_s: Annotated[int, Field(ge=1)] = 30 * 86_400
    # GET /v1/sessions: index entries one request may read past filters (a very selective
    # filter then answers a shorter page with a cursor), and how long a sort=updated
    # listing's snapshot lives after its last page was read (and, shorter, while only its
    # first page was: pollers of a first page must not pile snapshots up)
    list_scan_max: Annotated[int, Field(ge=100)] = 5000
    list_snapshot_ttl_s: Annotated[float, Field(gt=0)] = 600.0
    list_snapshot_first_ttl_s: Annotated[float, Field(gt=0)] = 60.0
    # added to Redis TIME when deciding session expiry; tests move time with it (keep 0)
    clock_offset_ms: int = 0
    # append every ingest attempt and its outcome to this JSON-lines file (api/audit.py);
    # the chaos suite's fencing checker reads it. Off by default.
    ingest_audit_path: str | None = None
    # /v1 without tokens on a non-loopback bind only when this says so (serving.py)
    insecure_no_auth: bool = False
    # slow clients (serving.py): a request's headers must arrive within header_timeout_s of
    # its first byte (or of the connection), its body within body_timeout_s of its headers
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024
    keep_alive_s: Annotated[int, Field(ge=1)] = 5
    # connections + requests in flight per listener before uvicorn answers 503
    limit_concurrency: Annotated[int, Field(ge=1)] = 2048
    # a second listener for the runners' ingest, /admin, probes and metrics, with its own
    # limit, so a flood on the public port does not reach them (None: no second listener)
    admin_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    admin_limit_concurrency: Annotated[int, Field(ge=1)] = 256
    # the durable record (docs/record.md): PostgreSQL beside Redis; None: Redis only
    database_url: str | None = None
    # the archiver (`streamward archiver`): how often it looks for due sessions, how often a
    # busy (owned) session is revisited, entries per transaction, and what Redis keeps
    archive_interval_s: Annotated[float, Field(gt=0)] = 0.5
    archive_revisit_s: Annotated[float, Field(gt=0)] = 2.0
    # a session seen active is due this long after (one pass batches its writes meanwhile)
    archive_batch_delay_s: Annotated[float, Field(ge=0)] = 1.0
    archive_batch_entries: Annotated[int, Field(ge=1, le=10_000)] = 500
    archive_sessions_per_pass: Annotated[int, Field(ge=1)] = 100
    archive_claim_s: Annotated[float, Field(gt=0)] = 30.0
    # the hot tail: the last N entries of a log stay in Redis after they are archived
    # at least 1: the ingest script reads the last seq from the log's last entry
    archive_hot_tail_entries: Annotated[int, Field(ge=1)] = 1000
    # ... and every entry younger than this (0: the count alone)
    archive_hot_tail_s: Annotated[float, Field(ge=0)] = 0.0
    # the lag /readyz and the metrics compare against (they report; nothing is refused)
    archive_lag_target_s: Annotated[float, Field(gt=0)] = 5.0
    # retention in the record (not Redis's RETENTION_S): days per project, a default for the
    # rest, one bounded pass per interval by one archiver
    record_retention_days: Annotated[int, Field(ge=1)] = 30
    record_retention_by_project: dict[str, Annotated[int, Field(ge=1)]] = {}
    record_retention_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    # signed completion callbacks (api/callbacks.py, docs/api.md#callbacks): project ->
    # secret (or several while rotating: each signs, as one more v1= in the header); an
    # invoke with a callback in a project without one is refused (callback_not_configured)
    callback_secrets: dict[str, str | list[str]] = {}
    # CIDRs and host names a callback URL may reach although private / loopback / link-local
    callback_allow: list[str] = []
    # one attempt's whole time (connect, send, answer); its claim lasts this + 5 s
    callback_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # retries: full jitter, the n-th waits up to min(max, base * 2^(n-1)); none starts
    # later than the window after the delivery was created (then it is dead)
    callback_retry_base_s: Annotated[float, Field(gt=0)] = 5.0
    callback_retry_max_s: Annotated[float, Field(gt=0)] = 600.0
    callback_retry_window_s: Annotated[float, Field(gt=0)] = 3600.0
    # the delivery worker of each API process: poll interval when idle, parallel attempts
    callback_poll_s: Annotated[float, Field(gt=0)] = 1.0
    callback_concurrency: Annotated[int, Field(ge=1, le=1000)] = 16
    # delivery records (and each run's callback) stay readable this long after the last write
    callback_retention_s: Annotated[int, Field(ge=60)] = 7 * 86_400
    # no delivery worker in this process (deliveries still enter the outbox; others send)
    callback_worker: bool = True
    # quotas (docs/operations.md#quotas); 0 or unset = unlimited. Per session: inputs
    # pending in one inbox (the running one included); per project: live sessions, and
    # invokes per second as a token bucket of invokes_burst tokens (0: max(1, ceil(rate)))
    max_pending_inputs: Annotated[int | None, Field(ge=0)] = 1000
    max_live_sessions: Annotated[int | None, Field(ge=0)] = 0
    invokes_per_s: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = 0.0
    invokes_burst: Annotated[int | None, Field(ge=0)] = 0
    # project -> overrides, e.g. {"team-a": {"max_live_sessions": 100, "invokes_per_s": 50}}
    quotas_by_project: dict[str, ProjectQuota] = {}
    # Retry-After of inbox_full and of the live-sessions limit (the bucket computes its own)
    quota_retry_after_s: Annotated[int, Field(ge=1)] = 1
    # /metrics (no token) names projects only when this says so (docs/operations.md#quotas)
    quota_metrics_by_project: bool = False


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
