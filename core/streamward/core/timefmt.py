"""Time formats shared by the service, the runner and the logs."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with millisecond precision."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rfc3339_opt(ms: int | str | None) -> str | None:
    """``rfc3339`` of a stored ms value (an int, or its text in a hash); None when unset."""
    if ms is None or ms == "":
        return None
    return rfc3339(int(ms))
