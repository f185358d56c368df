"""Typed calls of the session resource scripts: ``createSession-2`` (POST /v1/sessions) and
``updateSession-4`` (PATCH). ``LeaseStore.create_session`` / ``update_session`` call these."""

from __future__ import annotations

from dataclasses import dataclass

from streamward.lua import errors as E
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import as_int, as_list, as_str, ok_reply, status
from streamward.lua.scripts import Scripts


@dataclass(frozen=True, slots=True)
class Created:
    """createSession-2: ``created`` False when a live session has the id already; then
    ``same_key`` tells an idempotent repeat (created with the same key) from a conflict."""

    created: bool
    created_ms: int
    revived: bool = False  # a retired session created afresh: keep its other keys
    same_key: bool = False


@dataclass(frozen=True, slots=True)
class Updated:
    """updateSession-4: ``retry`` when the metadata changed since it was read; else the new
    ``updated_ms`` and either the seq of the ``session.updated`` entry the script wrote
    (no lease held) or the lease holder (replica id, incarnation) who must write it."""

    retry: bool
    updated_ms: int = 0
    seq: int = 0
    holder: tuple[str, str] | None = None


async def create_session(
    scripts: Scripts,
    sk: SessionKeys,
    *,
    title: str,
    metadata_json: str,
    session_type: str,
    status_name: str,
    create_key: str,
) -> Created:
    args = [sk.project, sk.session_id, title, metadata_json, session_type, status_name]
    raw = await scripts.script("createSession")([sk.meta, sk.inbox], [*args, create_key])
    r = ok_reply("createSession", as_list(raw), E.DUPLICATE)
    if status(r) == E.DUPLICATE:
        return Created(False, as_int(r[1]), same_key=as_int(r[2]) == 1)
    return Created(True, as_int(r[1]), revived=as_int(r[2]) == 1)


async def update_session(
    scripts: Scripts,
    sk: SessionKeys,
    *,
    expected_metadata: str,
    metadata_json: str,
    title_mode: str,  # keep | set | delete
    title: str,
    entry_json: str,
) -> Updated | None:
    """None when there is no live session (unknown, deleted or expired)."""
    keys = [sk.meta, sk.log, sk.lease, sk.epoch]
    args = [expected_metadata, metadata_json, title_mode, title, entry_json]
    r = as_list(await scripts.script("updateSession")(keys, args))
    if status(r) == E.NOT_FOUND:
        return None
    ok = ok_reply("updateSession", r)
    if as_int(ok[1]) == 0:
        return Updated(True)
    replica = as_str(ok[4])
    holder = (replica, as_str(ok[5])) if replica else None
    return Updated(False, as_int(ok[2]), as_int(ok[3]), holder)
