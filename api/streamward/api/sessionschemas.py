"""HTTP schemas of the session resource: create, update, start, stop. docs/api.md,
"Sessions as a resource"."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from streamward.api.routeschemas import SessionType
from streamward.api.schemas import InvokeAccepted, OwnerDetail, SessionOut
from streamward.core.contract import Id, Model
from streamward.core.jsonsafe import JSONValue, Text

Title = Annotated[Text, Field(max_length=500)]
# metadata: a JSON object (top-level keys are what listing filters match on)
Metadata = dict[Text, JSONValue]


class SessionCreate(Model):
    """``POST /v1/sessions``. ``input`` present (even ``null``) = a first input, run like a
    detached invoke; absent = no input."""

    id: Id | None = None  # default: server-made (``s_<hex>``)
    title: Title | None = None
    metadata: Metadata | None = None  # at most 16 KiB as JSON
    type: SessionType | None = None  # default: STREAMWARD_DEFAULT_TYPE
    input: JSONValue = None


class SessionCreated(SessionOut):
    """The created (201) or idempotently repeated (200) session; ``run``: its first
    input's detached answer (``running`` with the owner, or ``queued``), else null."""

    run: InvokeAccepted | None = None


class SessionUpdate(Model):
    """``PATCH /v1/sessions/{id}``: a JSON merge patch (RFC 7396) of title and metadata.
    An absent field is unchanged; ``title: null`` removes the title; in ``metadata`` a key
    set to ``null`` is removed, an object merges recursively, anything else replaces;
    ``metadata: null`` removes every key."""

    title: Title | None = None
    metadata: Metadata | None = None


class SessionControl(Model):
    """The answer of ``start`` / ``stop``: the owner that holds (start) or held (stop) it."""

    session_id: str
    status: Literal["started", "starting", "stopped", "stopping"]
    owner: OwnerDetail | None = None
    # start: no live runner serves the session's type (the start waits in its work stream)
    waiting_for_type: str | None = None
