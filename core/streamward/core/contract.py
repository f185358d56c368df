"""The wire contract between runners and the service: transcript ingest, and the entry type.

``IngestRequest`` is the body of ``POST /admin/sessions/transcripts/ingest``: the API validates
it, and the runner's shipper writes it with ``IngestEncoder`` (the same field names, tested
against the model; no model per entry on the runner's hot path). The entry type and the
entry-type constants come from the Redis layer, which stores them, and are re-exported here
for the service, the runner and the tooling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamward.core.jsonsafe import JSON_INT, SAFE_INT_MAX, JSONValue, Text
from streamward.lua.entries import RUN_CANCELLED as RUN_CANCELLED
from streamward.lua.entries import RUN_COMPLETED as RUN_COMPLETED
from streamward.lua.entries import RUN_FAILED as RUN_FAILED
from streamward.lua.entries import RUN_INTERRUPTED as RUN_INTERRUPTED
from streamward.lua.entries import RUN_MERGED as RUN_MERGED
from streamward.lua.entries import RUN_OUTPUT as RUN_OUTPUT
from streamward.lua.entries import RUN_STARTED as RUN_STARTED
from streamward.lua.entries import TERMINAL_STATUSES as TERMINAL_STATUSES
from streamward.lua.entries import TERMINAL_TYPES as TERMINAL_TYPES
from streamward.lua.entries import Entry as Entry

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,200}$", min_length=1, max_length=200)]
EntryType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=64)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestEntry(Model):
    """One entry on the wire (``Entry`` with an RFC 3339 ``ts`` instead of ``ts_ms``)."""

    seq: Annotated[int, Field(ge=1, le=SAFE_INT_MAX), JSON_INT]
    type: EntryType
    data: JSONValue = None
    ts: Annotated[Text, Field(max_length=64)] | None = None  # RFC 3339; server clock if absent


class IngestAnnounce(Model):
    """The owner runs the next input at once if runnable: its start notice may be published
    by the advance itself (as advanceInbox-5's announce arguments)."""

    replica_id: Id
    poison_after: Annotated[int, Field(ge=0, le=1_000_000), JSON_INT]


class IngestAdvance(Model):
    """After the append, consume the run's input and peek the next one (ingestAdvance-7):
    the post of a run's last entries saves the owner its own advanceInbox round trip."""

    entry_id: Annotated[str, Field(pattern=r"^\d{1,20}-\d{1,20}$")]  # the run's inbox entry
    count: Annotated[int, Field(ge=1, le=1000), JSON_INT]  # inputs to peek, at most
    announce: IngestAnnounce | None = None


def advance_body(entry_id: str, count: int, announce: tuple[str, int] | None) -> dict[str, Any]:
    """An ``IngestAdvance`` as the runner sends it (announce: replica id, poison_after)."""
    ann = None if announce is None else {"replica_id": announce[0], "poison_after": announce[1]}
    return {"entry_id": entry_id, "count": count, "announce": ann}


class IngestRequest(Model):
    session_id: Id
    project: Id = "default"
    run_id: Id
    token: Annotated[int, Field(ge=1, le=SAFE_INT_MAX), JSON_INT]
    entries: Annotated[list[IngestEntry], Field(min_length=1, max_length=10_000)]
    # who is writing: not used for fencing (the token alone decides), recorded in the ingest
    # audit so a checker can tell owners apart
    replica_id: Id | None = None
    incarnation: Annotated[Text | None, Field(max_length=200)] = None
    # only on the post of a run's last entries, from a runner that wants it (an older API
    # refuses the unknown field with 422: the runner then advances itself)
    advance: IngestAdvance | None = None


class IngestResult(Model):
    accepted: int
    duplicates: int
    last_seq: int
    # with ``advance``: advanceInbox-5's reply past its status (metas, head, state, cancel,
    # owners, announced), which the runner reads as if it had made the call itself
    advance: list[Any] | None = None


# sessions per batch ingest request (a replica's shippers coalesced, runner/ingest_http.py)
INGEST_BATCH_MAX = 256


class IngestBatchRequest(Model):
    """Several ``IngestRequest`` bodies in one request (``POST .../ingest/batch``)."""

    batches: Annotated[list[IngestRequest], Field(min_length=1, max_length=INGEST_BATCH_MAX)]


class IngestItemResult(Model):
    """One batch's answer, as ``POST .../ingest`` would give it alone: the HTTP status and
    its body (an ``IngestResult``, or a problem: stale_token, not_owner, seq_gap...)."""

    status: int
    body: dict[str, Any]


class IngestBatchResult(Model):
    results: list[IngestItemResult]


class IngestEncoder:
    """``IngestRequest`` bodies for one session lease, as the runner's shipper sends them.

    The fixed head is serialised once; an entry's ``data`` may be an ``orjson.Fragment`` (JSON
    serialised at put time), spliced in as is. Entries are sent without ``ts``: the server's
    clock stamps them.
    """

    def __init__(
        self,
        *,
        session_id: str,
        project: str,
        token: int,
        replica_id: str | None = None,
        incarnation: str | None = None,
    ) -> None:
        head: dict[str, Any] = {"session_id": session_id, "project": project, "token": token}
        if replica_id is not None:  # who writes: recorded in the API's ingest audit
            head.update(replica_id=replica_id, incarnation=incarnation)
        self._prefix = orjson.dumps(head)[:-1]  # without the closing brace

    def encode(
        self, run_id: str, entries: Iterable[Entry], advance: dict[str, Any] | None = None
    ) -> bytes:
        """``advance``: an ``IngestAdvance`` as a dict (the post of a run's last entries)."""
        doc: dict[str, Any] = {
            "run_id": run_id,
            "entries": [{"seq": e.seq, "type": e.type, "data": e.data} for e in entries],
        }
        if advance is not None:
            doc["advance"] = advance
        return self._prefix + b"," + orjson.dumps(doc)[1:]
