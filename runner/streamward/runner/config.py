"""Runner settings from ``STREAMWARD_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamward.lua.config import RedisSettings
from streamward.lua.keys import validate_id


def default_replica_id() -> str:
    """``$POD_NAME`` when set (one replica per pod), else ``<hostname>-<pid>``."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    host = socket.gethostname().split(".", 1)[0] or "runner"
    return f"{host}-{os.getpid()}"


def heartbeat_path(replica_id: str) -> Path:
    """Default heartbeat file of a replica (what ``streamward runner check`` reads)."""
    return Path(tempfile.gettempdir()) / f"streamward-runner-{replica_id}.heartbeat"


class RunnerSettings(RedisSettings, BaseSettings):
    """Everything a runner reads from the environment; names match docs/architecture.md.

    Redis connection fields (``REDIS_MODE``, ``REDIS_URL``, ``SENTINELS``, credentials, TLS)
    come from ``lua.client.RedisSettings``, shared with the API.
    """

    model_config = SettingsConfigDict(env_prefix="STREAMWARD_", extra="ignore")

    key_prefix: str = "sw"
    admin_token: str | None = None
    api_url: str = "http://127.0.0.1:8700"

    replica_id: str = Field(default_factory=default_replica_id)
    # [type=]module:callable, comma-separated (parsed by handlers.parse_handler_specs at start,
    # for a one-line error); a spec without type= serves default_type
    handler: str = "streamward.runner.handlers:echo"
    default_type: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "default"
    max_sessions: Annotated[int, Field(ge=1)] = 1000
    replica_ttl_ms: Annotated[int, Field(ge=500, le=600_000)] = 5000
    lease_ttl_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 60_000
    # None = lease_ttl_ms / 3 (20 s with the defaults)
    lease_renew_interval_ms: Annotated[int, Field(ge=100)] | None = None
    drain_timeout_s: Annotated[float, Field(ge=0)] = 20.0
    close_delay_s: Annotated[float, Field(ge=0)] = 60.0
    # caps every session's idle timeout (a route's idle_timeout_seconds); tests and dev
    # systems use it to see passivation without waiting minutes
    close_delay_max_s: Annotated[float, Field(ge=0)] | None = None
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # liveness file touched on every successful replica renew (None = heartbeat_path(id))
    heartbeat_file: str | None = None

    # tuning knobs: rarely changed, documented in docs/runner.md
    sweep_interval_s: Annotated[float, Field(gt=0)] = 5.0
    ship_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    # concurrent sessions' batches leave in one POST .../ingest/batch (runner/ingest_http.py)
    ship_coalesce: bool = True
    ship_batch_max: Annotated[int, Field(ge=1, le=10_000)] = 500
    ship_batch_max_bytes: Annotated[int, Field(ge=1024)] = 512 * 1024
    ship_buffer_max: Annotated[int, Field(ge=1)] = 1000
    ship_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # entries whose data serialises larger than this are replaced by a truncation marker
    ship_entry_max_bytes: Annotated[int, Field(ge=1024)] = 900 * 1024
    # run.started copies the run's input up to this size (JSON); a larger one is left out
    # (the handler still gets it) so the entry that names the run's owner is never truncated
    started_input_max_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    # a run that took down this many owners in a row ends run.failed (poison); 0 = never
    poison_after_owners: Annotated[int, Field(ge=0)] = 3
    # the heartbeat thread renews only while the event loop ticked within this bound
    # (None = 3 replica TTLs); a loop wedged longer lets its replica lease expire
    max_loop_stall_ms: Annotated[int, Field(ge=100)] | None = None
    log_level: str = "info"

    # session hosts (docs/runner.md, "Writing a session host")
    passivate_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # past it the hook is cancelled
    state_max_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    # failed activations in a row before the waiting inputs end run.failed (activation_failed)
    activation_max_failures: Annotated[int, Field(ge=1)] = 3

    @field_validator("replica_id")
    @classmethod
    def _valid_replica_id(cls, v: str) -> str:
        return validate_id("replica_id", v)

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> Self:
        if self.lease_renew_interval_ms is not None and (
            self.lease_renew_interval_ms >= self.lease_ttl_ms
        ):
            raise ValueError(
                f"lease_renew_interval_ms ({self.lease_renew_interval_ms}) must be below "
                f"lease_ttl_ms ({self.lease_ttl_ms})"
            )
        return self

    @property
    def lease_renew_ms(self) -> int:
        return self.lease_renew_interval_ms or self.lease_ttl_ms // 3

    @property
    def replica_renew_ms(self) -> int:
        """Replica lease renew period: a quarter of its TTL, so three renewals may fail."""
        return max(50, self.replica_ttl_ms // 4)

    @property
    def loop_stall_ms(self) -> int:
        """The stall bound, never below two ticks of the heartbeat loop."""
        bound = self.max_loop_stall_ms or 3 * self.replica_ttl_ms
        return max(bound, 2 * self.replica_renew_ms)

    @property
    def fence_margin_ms(self) -> int:
        """How much earlier than the lease's expiry the runner stops itself (clock-rate slack)."""
        return max(50, self.replica_ttl_ms // 10)

    def session_close_delay_s(self, idle_timeout_ms: str | None) -> float:
        """A session's idle delay: its route's idle timeout if set, else close_delay_s; capped."""
        delay = int(idle_timeout_ms) / 1000 if idle_timeout_ms else self.close_delay_s
        return delay if self.close_delay_max_s is None else min(delay, self.close_delay_max_s)

    @property
    def heartbeat_file_path(self) -> Path:
        return Path(self.heartbeat_file) if self.heartbeat_file else heartbeat_path(self.replica_id)

    @property
    def ingest_url(self) -> str:
        return self.api_url.rstrip("/") + "/admin/sessions/transcripts/ingest"
