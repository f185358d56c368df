"""HTTP schemas of signed completion callbacks: the invoke's ``callback`` and the delivery
records of ``GET /v1/runs/{run_id}/deliveries``; re-exported by ``api.schemas``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from streamward.core.contract import (
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_MERGED,
    RUN_STARTED,
    Model,
)
from streamward.core.jsonsafe import Text

# the entry types a callback may name: a run's milestones (run.output is not one: a stream
# of outputs is what the transcript and the event stream are for)
CALLBACK_EVENTS = (
    RUN_STARTED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_CANCELLED,
    RUN_MERGED,
    RUN_INTERRUPTED,
)
# every way a run ends (run.merged: folded into a running run by the handler)
DEFAULT_CALLBACK_EVENTS = (RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED, RUN_MERGED)


class CallbackSpec(Model):
    """POST the run's entries of these types to ``url``, signed with the project's secret."""

    url: Annotated[Text, Field(min_length=1, max_length=2048)]
    # names outside CALLBACK_EVENTS are refused with 422 invalid_callback_event
    events: (
        Annotated[list[Annotated[Text, Field(max_length=64)]], Field(min_length=1, max_length=16)]
        | None
    ) = None


class DeliveryAttemptOut(Model):
    at: str
    status_code: int | None = None  # the receiver's answer; None when there was none
    error: str | None = None  # timeout, connection error, refused address, non-2xx


class DeliveryOut(Model):
    delivery_id: str
    event: str
    seq: int
    url: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    attempt_log: list[DeliveryAttemptOut]  # the last 50 attempts, oldest first
    created_at: str
    next_retry_at: str | None = None  # pending only
    delivered_at: str | None = None
    dead_at: str | None = None


class RunDeliveries(Model):
    run_id: str
    session_id: str
    url: str
    events: list[str]
    items: list[DeliveryOut]  # in the order the entries were ingested
