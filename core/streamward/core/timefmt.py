"""Time formats shared by the service, the runner and the logs."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with millisecond precision."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
