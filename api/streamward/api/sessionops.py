"""The session resource: create (with an optional first input), merge-patch title and
metadata, start (an owner activates it) and stop (its owner passivates it now).

Creating is one script in the session's slot (``createSession-2``); a first input then goes
through the detached invoke path (``api.invoke``) with an idempotency key derived from the
creation, so a retry with the same ``Idempotency-Key`` runs it exactly once. docs/api.md,
"Sessions as a resource".
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

import orjson

from streamward.api import invoke as invocation
from streamward.api.deps import AppState
from streamward.api.inputs import encode_input
from streamward.api.problems import ProblemError
from streamward.api.schemas import InvokeAccepted, InvokeRequest
from streamward.api.sessionschemas import SessionCreate, SessionUpdate
from streamward.lua.keys import DEFAULT_TYPE, SessionKeys
from streamward.lua.leases import Ownership

METADATA_MAX_BYTES = 16 * 1024  # a session's metadata as serialised JSON
NEW_STATUS = "idle"  # a created session with no input yet (an input makes it active)
MERGE_ATTEMPTS = 20  # concurrent PATCHes of one session's metadata: merge again, this often
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.2  # start / stop wait for the owner with this backoff
RETIRED = ("deleted", "expired", "dead")


def new_session_id(project: str, idempotency_key: str | None) -> str:
    """A server-made id: derived from the Idempotency-Key when there is one (a repeat lands
    on the same session, so the key is checked in that session's slot), else random."""
    if idempotency_key is None:
        return f"s_{uuid.uuid4().hex}"
    digest = hashlib.sha256(f"{project}\0{idempotency_key}".encode()).hexdigest()
    return f"s_{digest[:32]}"


def encode_metadata(value: dict[str, Any]) -> str:
    """The metadata's JSON text; 413 ``metadata_too_large`` over ``METADATA_MAX_BYTES``."""
    return encode_input(value, METADATA_MAX_BYTES, "metadata", code="metadata_too_large")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: null removes a key, an object merges, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def live_meta(meta: dict[str, str], sk: SessionKeys) -> dict[str, str]:
    """The meta of a session that exists and is not retired: 404 / 409 otherwise."""
    if not meta.get("created_ms"):
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    if meta.get("delete_after_ms") or meta.get("status") in RETIRED:
        raise ProblemError(409, "session_retired", f"session {sk.session_id!r} has ended")
    return meta


async def create(
    state: AppState, project: str, body: SessionCreate, idempotency_key: str | None
) -> tuple[SessionKeys, bool, InvokeAccepted | None]:
    """(session, created, first input's answer). 409 ``session_exists`` when a live session
    has the id and this is not a repeat with the key it was created with."""
    settings = state.settings
    sk = state.keys.session(project, body.id or new_session_id(project, idempotency_key))
    metadata_json = encode_metadata(body.metadata or {})
    has_input = "input" in body.model_fields_set
    if has_input:  # refused before anything is written
        encode_input(body.input, settings.max_input_bytes)
    session_type = body.type or settings.default_type
    got = await state.store.create_session(
        sk,
        title=body.title or "",
        metadata_json=metadata_json,
        session_type=session_type,
        status=NEW_STATUS,
        create_key=idempotency_key or "",
    )
    if not got.created and not got.same_key:
        raise ProblemError(
            409,
            "session_exists",
            f"session {sk.session_id!r} exists (a repeat needs the Idempotency-Key it was "
            "created with)",
        )
    if got.revived:  # a deleted id created again: its log and epoch stay
        await state.streams.revive_session(sk)
    run = None
    if has_input:
        # keyed by the creation: a repeat (same Idempotency-Key) finds the same run, and a
        # first attempt that died between the create and the enqueue is completed by it
        req = InvokeRequest(
            input=body.input,
            mode="detached",
            idempotency_key=f"create:{got.created_ms}",
            type=session_type,
        )
        run = await invocation.invoke_detached(state, sk, req, f"run_{uuid.uuid4().hex}")
    elif got.created:
        await state.streams.touch_session(sk, got.created_ms)
    return sk, got.created, run


async def update(state: AppState, sk: SessionKeys, body: SessionUpdate) -> None:
    """Merge the patch into the stored metadata (compare-and-set, merged again when another
    PATCH won), set or remove the title, and announce ``session.updated`` on the log."""
    fields = body.model_fields_set
    title: str | bool | None = body.title if "title" in fields else False
    for _ in range(MERGE_ATTEMPTS):
        meta = live_meta(await state.streams.meta(sk), sk)
        stored = meta.get("metadata", "")
        current = orjson.loads(stored) if stored else {}
        merged = current
        if "metadata" in fields:
            merged = merge_patch(current, body.metadata) if body.metadata is not None else {}
        new_title = meta.get("title") or None if title is False else title
        entry = orjson.dumps({"title": new_title, "metadata": merged}).decode()
        got = await state.store.update_session(
            sk,
            expected_metadata=stored,
            metadata_json=encode_metadata(merged),
            title=title,
            entry_json=entry,
        )
        if got is None:
            live_meta(await state.streams.meta(sk), sk)  # deleted meanwhile: 404 / 409
            raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
        if not got.retry:
            break
    else:
        raise ProblemError(
            409, "update_conflict", "the metadata kept changing under this update: retry"
        )
    if got.holder is not None:
        # the owner is the log's only writer: it writes the entry with its next seq (a dead
        # holder gets no mail: the change is in meta, the entry is skipped)
        await state.store.notify_replica(*got.holder, "updated", sk.ref)
    await state.streams.touch_session(sk, got.updated_ms)


async def _wait(state: AppState, sk: SessionKeys, done: Any) -> tuple[bool, Ownership]:
    """Poll ownership and meta until ``done(own, meta)``, up to ``START_TIMEOUT_S``."""
    deadline = time.monotonic() + state.settings.start_timeout_s
    delay = POLL_FIRST_S
    while True:
        own, meta = await asyncio.gather(state.store.ownership(sk), state.streams.meta(sk))
        if done(own, meta):
            return True, own
        left = deadline - time.monotonic()
        if left <= 0:
            return False, own
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)


def _activated(own: Ownership, meta: dict[str, str]) -> bool:
    return own.alive and (
        meta.get("activated_token") == str(own.token) or bool(meta.get("active_run_id"))
    )


async def start(state: AppState, sk: SessionKeys) -> tuple[bool, Ownership, str]:
    """Make sure an owner holds the session and its host is activated: the live holder is
    mailed ``start``, else the session's type is asked for an owner (work reason ``start``).
    Returns (activated within the start timeout, ownership, session type)."""
    meta = live_meta(await state.streams.meta(sk), sk)
    session_type = meta.get("type") or DEFAULT_TYPE
    own = await state.store.ownership(sk)
    if own.alive and own.replica_id is not None:
        await state.streams.send_mail(own.replica_id, "start", sk.ref)
    else:
        await state.streams.publish_work(sk.ref, "start", session_type)
    ok, own = await _wait(state, sk, _activated)
    return ok, own, session_type


async def stop(state: AppState, sk: SessionKeys, cancel: bool) -> tuple[bool, Ownership | None]:
    """Passivate now: (released within the timeout, the owner that held it or None).

    409 ``run_active`` with a run active unless ``cancel`` (then it is cancelled first);
    409 ``inputs_pending`` while inputs wait: a stop never drops input, and a released
    session with input waiting is claimed again at once."""
    meta = await state.streams.meta(sk)
    if not meta.get("created_ms"):
        raise ProblemError(404, "session_not_found", f"no session {sk.session_id!r}")
    own, pending = await asyncio.gather(state.store.ownership(sk), state.streams.pending(sk))
    active = meta.get("active_run_id") or ""
    if active and not cancel:
        raise ProblemError(
            409,
            "run_active",
            f"run {active} is active: cancel it first, or stop with cancel=true",
            active_run_id=active,
        )
    queued = pending - (1 if active else 0)
    if queued > 0:
        raise ProblemError(
            409,
            "inputs_pending",
            f"{queued} input(s) wait: a stop never drops input (cancel them, or let them run)",
            pending=queued,
        )
    if active:  # recorded even without a live owner: the next owner ends it cancelled
        await invocation.cancel_run(state.streams, sk, own, active)
    if not own.alive or own.replica_id is None:
        return True, None  # nobody to passivate (a dead holder's lease is the watchdog's)
    await state.streams.send_mail(own.replica_id, "stop", sk.ref)
    held = (own.replica_id, own.incarnation, own.token)

    def released(now: Ownership, _: dict[str, str]) -> bool:
        return not now.held or (now.replica_id, now.incarnation, now.token) != held

    ok, _ = await _wait(state, sk, released)
    return ok, own
