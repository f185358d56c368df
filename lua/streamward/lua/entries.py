"""The transcript entry: one shape for the runner's shipper, the ingest contract and the store.

The store is the lowest layer that writes and reads entries, so the type and the entry-type
constants live here; ``streamward.core.contract`` re-exports them for the service, the runner
and the tooling. ``ingestEntries-5.lua`` keeps its own copy of the terminal set (Lua cannot
import Python): change both together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

import orjson

RUN_STARTED = "run.started"
RUN_OUTPUT = "run.output"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
RUN_INTERRUPTED = "run.interrupted"
# an input a running run absorbed through ``ctx.pending_inputs()``: its own terminal entry
RUN_MERGED = "run.merged"

# a session's title or metadata changed (PATCH /v1/sessions/{id}); run_id "session", data
# {"title", "metadata"}: the session's description after the change. Written by the API when
# no lease is held (updateSession-4), else by the owner (mail ``updated``)
SESSION_UPDATED = "session.updated"
SESSION_RUN_ID = "session"  # the run_id of session-level entries (not of any run)

# a run's last entry: nothing of that run follows (a tail following the run ends there)
TERMINAL_TYPES = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED, RUN_MERGED})
# the same ends as a run's state (``sw:{S}:runs`` status), e.g. ``completed``
TERMINAL_STATUSES = frozenset(t.removeprefix("run.") for t in TERMINAL_TYPES)


@dataclass(frozen=True, slots=True)
class Entry:
    """One transcript entry.

    ``data`` is the decoded JSON value; an ``orjson.Fragment`` (JSON serialised already) is
    also accepted wherever an entry is written, so the runner serialises a value once. An entry
    read from the log carries its ``id`` (``<seq>-0``), writer ``token`` and Redis ``ts_ms``;
    one to write leaves ``ts_ms`` None for the server's clock.
    """

    seq: int
    type: str
    data: Any = None
    _: KW_ONLY
    run_id: str = ""
    token: int = 0
    ts_ms: int | None = None
    id: str = ""

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    @property
    def started_by(self) -> str:
        """The replica a ``run.started`` entry names in its data; "" for any other entry."""
        if self.type == RUN_STARTED and isinstance(self.data, dict):
            return str(self.data.get("replica_id", ""))
        return ""


def session_updated_data(meta: Mapping[str, str]) -> dict[str, Any]:
    """A ``session.updated`` entry's data, from the session's meta (``title``, ``metadata``)."""
    metadata = orjson.loads(meta.get("metadata") or "{}")
    return {"title": meta.get("title") or None, "metadata": metadata}
