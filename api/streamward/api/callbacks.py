"""Signed completion callbacks: an invoke's ``callback`` checked and stored with its run,
deliveries put in the outbox when the run's named entries are ingested, the payload and
its signature. Sending is ``streamward.api.callbackworker``; Redis is ``lua.outbox``.

Hot paths: an invoke without a callback does nothing here; one with a callback costs one
more round trip (the run's callback is stored before the input is enqueued, so no entry of
the run can be ingested before it). An ingest batch holding none of the types a callback
may name (``run.output`` alone, the bulk) does nothing either; one that does reads the
run's callback concurrently with the fenced append (no added latency), and writes a
delivery only when the run has a callback naming the entry's type.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Sequence
from functools import lru_cache

import orjson

from streamward.api.callbackschemas import CALLBACK_EVENTS, DEFAULT_CALLBACK_EVENTS, CallbackSpec
from streamward.api.config import Settings
from streamward.api.problems import ProblemError
from streamward.api.urlguard import AllowList, UrlRefused, check
from streamward.core.contract import RUN_INTERRUPTED, RUN_STARTED, Entry
from streamward.core.timefmt import rfc3339
from streamward.lua.keys import SessionKeys
from streamward.lua.outbox import Outbox, RunCallback

SIGNATURE_HEADER = "X-Streamward-Signature"
DELIVERY_HEADER = "X-Streamward-Delivery"
TIMESTAMP_HEADER = "X-Streamward-Timestamp"
EVENT_HEADER = "X-Streamward-Event"
_NAMEABLE = frozenset(CALLBACK_EVENTS)


@lru_cache(maxsize=8)
def _allow_list(entries: tuple[str, ...]) -> AllowList:
    return AllowList.parse(list(entries))


def allow_list(settings: Settings) -> AllowList:
    """``STREAMWARD_CALLBACK_ALLOW`` parsed (once per distinct value)."""
    return _allow_list(tuple(settings.callback_allow))


def project_secrets(settings: Settings, project: str) -> list[str]:
    """The project's callback secrets, newest first ([] when it has none)."""
    raw = settings.callback_secrets.get(project)
    if raw is None:
        return []
    return [raw] if isinstance(raw, str) else [s for s in raw if s]


def sign(secrets: Sequence[str], timestamp_s: int, body: bytes) -> str:
    """``t=<unix s>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of ``"<t>.<body>"`` per secret."""
    signed = str(timestamp_s).encode() + b"." + body
    sigs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp_s}", *(f"v1={s}" for s in sigs)])


def delivery_id(sk: SessionKeys, run_id: str, seq: int) -> str:
    """One entry's delivery id: the same for the same entry, however often it is ingested."""
    digest = hashlib.sha256(f"{sk.ref}\n{run_id}\n{seq}".encode()).hexdigest()
    return f"dlv_{digest[:32]}"


async def register(
    outbox: Outbox,
    settings: Settings,
    sk: SessionKeys,
    spec: CallbackSpec,
    run_id: str,
) -> None:
    """Check an invoke's callback (422 with a stable code) and store it with ``run_id``."""
    events = tuple(dict.fromkeys(spec.events or DEFAULT_CALLBACK_EVENTS))
    unknown = [e for e in events if e not in _NAMEABLE]
    if unknown:
        raise ProblemError(
            422,
            "invalid_callback_event",
            f"unknown callback event {unknown[0][:64]!r}; one of {', '.join(CALLBACK_EVENTS)}",
        )
    if not project_secrets(settings, sk.project):
        raise ProblemError(
            422,
            "callback_not_configured",
            f"project {sk.project!r} has no callback secret (STREAMWARD_CALLBACK_SECRETS)",
        )
    try:
        await check(spec.url, allow_list(settings))
    except UrlRefused as exc:
        raise ProblemError(422, exc.code, exc.detail) from None
    cb = RunCallback(
        run_id=run_id,
        project=sk.project,
        session_id=sk.session_id,
        url=spec.url,
        events=events,
        created_ms=int(time.time() * 1000),
    )
    await outbox.register(cb, settings.callback_retention_s * 1000)


def may_have_callback(
    outbox: Outbox | None, settings: Settings, sk: SessionKeys, entries: Sequence[Entry]
) -> bool:
    """Whether a batch of ``sk``'s entries may owe callback deliveries: an entry a callback may
    name, in a project with a callback secret (without one no invoke can register a callback,
    see ``register``: the run's callback is not even read, which saves a Redis round trip per
    run). Every API process must share the secrets' configuration (docs/api.md)."""
    return (
        outbox is not None
        and any(e.type in _NAMEABLE for e in entries)
        and bool(project_secrets(settings, sk.project))
    )


def lookup(
    outbox: Outbox | None,
    settings: Settings,
    sk: SessionKeys,
    run_id: str,
    entries: Sequence[Entry],
) -> Awaitable[RunCallback | None] | None:
    """The run's callback read, when the batch may owe deliveries (else None: nothing to do,
    no Redis call)."""
    if outbox is None or not may_have_callback(outbox, settings, sk, entries):
        return None
    return outbox.run_callback(run_id)


def _status(entry_type: str) -> str:
    if entry_type == RUN_STARTED:
        return "running"
    if entry_type == RUN_INTERRUPTED:
        return "interrupted"
    return entry_type.removeprefix("run.")


def payload(did: str, sk: SessionKeys, cb: RunCallback, entry: Entry, now_ms: int) -> bytes:
    """The POST body: the entry as served by the API, and a summary of the run."""
    ts_ms = entry.ts_ms if entry.ts_ms is not None else now_ms
    return orjson.dumps(
        {
            "delivery_id": did,
            "event": entry.type,
            "entry": {
                "id": f"{entry.seq}-0",
                "seq": entry.seq,
                "type": entry.type,
                "run_id": cb.run_id,
                "session_id": sk.session_id,
                "token": entry.token,
                "data": entry.data,
                "ts": rfc3339(ts_ms),
            },
            "run": {
                "run_id": cb.run_id,
                "session_id": sk.session_id,
                "project": sk.project,
                "status": _status(entry.type),
                "invoked_at": rfc3339(cb.created_ms),
                "updated_at": rfc3339(ts_ms),
            },
        }
    )


async def add_deliveries(
    outbox: Outbox,
    settings: Settings,
    sk: SessionKeys,
    cb: RunCallback,
    entries: Sequence[Entry],
) -> int:
    """After the fenced append succeeded: a delivery per entry the callback names, replays
    included (a retry after this process died between the append and this write must still
    create it; the delivery id makes the second write a no-op). Returns how many were new."""
    if cb.project != sk.project or cb.session_id != sk.session_id:
        return 0  # a run id of another session: never deliver across projects
    now_ms = int(time.time() * 1000)
    added = 0
    for e in entries:
        if e.type not in cb.events:
            continue
        did = delivery_id(sk, cb.run_id, e.seq)
        fields: dict[str, str | int] = {
            "run_id": cb.run_id,
            "project": sk.project,
            "session_id": sk.session_id,
            "event": e.type,
            "seq": e.seq,
            "url": cb.url,
            "body": payload(did, sk, cb, e, now_ms).decode(),
        }
        if await outbox.add(did, cb.run_id, fields, settings.callback_retention_s * 1000):
            added += 1
    return added


async def after_api_writes(
    outbox: Outbox | None, settings: Settings, sk: SessionKeys, written: Sequence[tuple[str, Entry]]
) -> None:
    """Entries the API wrote itself (a delete's ``run.cancelled``): their deliveries too."""
    for run_id, entry in written:
        read = lookup(outbox, settings, sk, run_id, [entry])
        cb = await read if read is not None else None
        if cb is not None and outbox is not None:
            await add_deliveries(outbox, settings, sk, cb, [entry])
