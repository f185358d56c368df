"""``GET /v1/sessions`` from the Redis indexes: exact pages, opaque cursors, filters.

The order's index gives candidates (``streamward.lua.listing``); each chunk's meta is read
in one pipelined round trip and filtered here; the matches are rendered. A page holds
``limit`` items unless it is the last (``next_cursor`` null), or unless the per-request
scan budget ran out first (very selective filters): then it is shorter and carries a
cursor to go on from. docs/api.md, "Listing sessions".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streamward.api.problems import ProblemError
from streamward.api.schemas import SessionOut
from streamward.lua.keys import DEFAULT_TYPE, SessionKeys
from streamward.lua.streams import Streams

Render = Callable[[SessionKeys], Awaitable[SessionOut | None]]
Sort = Literal["created", "updated"]
# candidates read per chunk when filters may reject some (unfiltered: exactly what is needed)
FILTERED_CHUNK = 100


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What a listing asks for, resolved (times in ms, inclusive lower bounds)."""

    sort: Sort = "updated"
    desc: bool = True
    status: str | None = None
    route_id: str | None = None
    session_type: str | None = None
    created_min_ms: int | None = None
    updated_min_ms: int | None = None  # updated_after + 1 ms
    active_minutes: int | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.status, self.route_id, self.session_type, self.created_min_ms)
        ) or bool(self.metadata)

    def fingerprint(self) -> str:
        """Names the query a cursor was made for (the limit may change between pages)."""
        parts = [
            self.sort, self.desc, self.status, self.route_id, self.session_type,
            self.created_min_ms, self.updated_min_ms, self.active_minutes, list(self.metadata),
        ]  # fmt: skip
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:12]


@dataclass(slots=True)
class Cursor:
    """Where a listing goes on: the query's fingerprint, the activity bound fixed by the
    first page (``active_minutes`` is relative to it), and the position: a keyset
    ``(created_ms, session_id)`` or a snapshot and the rank to read next."""

    fingerprint: str
    activity_min_ms: int | None
    keyset: tuple[int, str] | None = None
    snapshot_id: str | None = None
    offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


_SALT = b"streamward-list-cursor:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(c: Cursor) -> str:
    body: dict[str, Any] = {"v": 1, "f": c.fingerprint, "a": c.activity_min_ms}
    if c.keyset is not None:
        body["k"] = [c.keyset[0], c.keyset[1]]
    if c.snapshot_id is not None:
        body["n"] = c.snapshot_id
        body["i"] = c.offset
    body.update(c.extra)
    payload = orjson.dumps(body)
    # a checksum, not a signature: the project comes from the caller's token, so a forged
    # cursor can only start a listing of the caller's own sessions somewhere else
    check = hashlib.sha256(_SALT + payload).digest()[:6]
    return f"{_b64(payload)}.{_b64(check)}"


def _bad(detail: str) -> ProblemError:
    return ProblemError(422, "invalid_cursor", detail)


def decode_cursor(text: str) -> Cursor:
    """A cursor this API made, or 422 ``invalid_cursor``."""
    payload_text, dot, check_text = text.partition(".")
    try:
        payload = _unb64(payload_text)
        check = _unb64(check_text)
    except ValueError:
        raise _bad("not a page cursor") from None
    if not dot or hashlib.sha256(_SALT + payload).digest()[:6] != check:
        raise _bad("not a page cursor (altered or truncated)")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _bad("not a page cursor") from None
    if not isinstance(body, dict) or body.get("v") != 1 or not isinstance(body.get("f"), str):
        raise _bad("not a page cursor of this version")
    a, k, n, i = body.get("a"), body.get("k"), body.get("n"), body.get("i", 0)
    ok = (a is None or type(a) is int) and type(i) is int and i >= 0
    keyset: tuple[int, str] | None = None
    if k is not None:
        ok = ok and isinstance(k, list) and len(k) == 2 and type(k[0]) is int
        ok = ok and isinstance(k[1], str) and 0 < len(k[1]) <= 200
        keyset = (k[0], k[1]) if ok else None
    if n is not None:
        ok = ok and isinstance(n, str) and len(n) == 32 and all(c in "0123456789abcdef" for c in n)
    if not ok:
        raise _bad("not a page cursor (bad fields)")
    extra = {key: v for key, v in body.items() if key not in ("v", "f", "a", "k", "n", "i")}
    return Cursor(body["f"], a, keyset, n, i, extra)


def json_object(text: str | None) -> dict[str, Any] | None:
    """The session's ``metadata`` meta field read back (None: absent or not an object)."""
    if not text:
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def scalar_text(value: Any) -> str | None:
    """The text a ``metadata.<key>`` filter compares with: a string itself, a number or a
    boolean as its JSON text; null, objects and arrays match nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return None


def matches(q: ListQuery, meta: dict[str, str]) -> bool:
    """Whether one session's meta passes the query's filters (the index, and for creation
    order the activity bound, are checked by the caller)."""
    if meta.get("status") == "deleted":  # off the indexes; a snapshot may still hold it
        return False
    if q.status is not None and meta.get("status") != q.status:
        return False
    if q.route_id is not None and meta.get("route_id") != q.route_id:
        return False
    if q.session_type is not None and (meta.get("type") or DEFAULT_TYPE) != q.session_type:
        return False
    created_ms = int(meta.get("created_ms") or 0)
    if q.sort == "updated" and q.created_min_ms is not None and created_ms < q.created_min_ms:
        return False
    if q.metadata:
        doc = json_object(meta.get("metadata"))
        if doc is None:
            return False
        return all(k in doc and scalar_text(doc[k]) == v for k, v in q.metadata)
    return True


@dataclass(slots=True)
class _Candidates:
    """The order's index, read chunk by chunk from a position."""

    streams: Streams
    project: str
    q: ListQuery
    cursor: Cursor
    ttl_ms: int  # a snapshot's TTL once a second page read it
    first_ttl_ms: int  # its TTL until then (a first page read alone, e.g. by a dashboard)
    limit: int
    done: bool = False
    head: list[tuple[str, int]] | None = None

    async def take(self, n: int) -> list[tuple[str, int, Any]]:
        """Up to ``n`` (session_id, score, position after it); [] at the end."""
        if self.done:
            return []
        c, q = self.cursor, self.q
        if q.sort == "created":
            got, self.done = await self.streams.read_created(
                self.project, c.keyset, q.created_min_ms, q.desc, n
            )
            if got:  # the next read starts after the last one handed out
                c.keyset = (got[-1][1], got[-1][0])
            return [(sid, score, (score, sid)) for sid, score in got]
        if c.snapshot_id is None and c.offset == 0 and self.head is None:
            # the first page: the head, and the window frozen when there is more
            sid = uuid.uuid4().hex
            snap = await self.streams.snapshot_activity(
                self.project, sid, c.activity_min_ms, q.desc, self.limit + 1, self.first_ttl_ms
            )
            c.snapshot_id = snap.snapshot_id
            self.head = snap.head
            if snap.snapshot_id is None:
                self.done = True
            got = snap.head
        elif c.snapshot_id is None:
            return []
        else:
            read = await self.streams.read_snapshot(
                self.project, c.snapshot_id, c.offset, n, q.desc, self.ttl_ms
            )
            if read is None:
                raise ProblemError(
                    410, "cursor_expired", "this listing's snapshot expired: start again"
                )
            got = read
            if len(got) < n:
                self.done = True
        start = c.offset
        c.offset += len(got)
        return [(sid, score, start + i + 1) for i, (sid, score) in enumerate(got)]


async def redis_page(
    streams: Streams,
    project: str,
    q: ListQuery,
    cursor: Cursor | None,
    limit: int,
    render: Render,
    *,
    scan_max: int,
    snapshot_ttl_ms: int,
    first_ttl_ms: int,
) -> tuple[list[SessionOut], str | None]:
    """One page and the cursor of the next (None: this was the last)."""
    if cursor is None:
        bound = q.updated_min_ms
        if q.active_minutes is not None:
            recent = await streams.now_ms() - q.active_minutes * 60_000
            bound = recent if bound is None else max(bound, recent)
        cursor = Cursor(q.fingerprint(), bound)
    elif cursor.fingerprint != q.fingerprint():
        raise ProblemError(422, "invalid_cursor", "this cursor was made for another query")
    src = _Candidates(streams, project, q, cursor, snapshot_ttl_ms, first_ttl_ms, limit)
    budget = max(scan_max, limit + 1)
    chunk = max(limit + 1, FILTERED_CHUNK) if q.filtered() else limit + 1
    out: list[tuple[SessionOut, Any]] = []
    last_pos: Any = None  # after the last candidate read
    picked_pos: Any = None  # after the last match taken into the page
    more = False
    while not more and budget > 0:
        got = await src.take(min(chunk, budget))
        if not got:
            break
        budget -= len(got)
        ids = [sid for sid, _, _ in got]
        metas = await streams.listing_meta(project, ids)
        if q.sort == "created":
            acts = await streams.activity_scores(project, ids)
        else:
            acts = [score for _, score, _ in got]
        gone = [(sid, a) for sid, m, a in zip(ids, metas, acts, strict=True) if m is None and a]
        if gone:  # keys expired after retention: off the indexes (score-checked)
            await streams.prune_gone(project, [(s, a) for s, a in gone if a is not None])
        picked: list[tuple[str, Any]] = []
        for (sid, _, pos), meta, act in zip(got, metas, acts, strict=True):
            last_pos = pos
            if meta is None or not matches(q, meta):
                continue
            act_min = cursor.activity_min_ms
            if q.sort == "created" and act_min is not None and (act is None or act < act_min):
                continue
            if len(out) + len(picked) == limit:
                more = True  # one more match exists: the page is full and not the last
                break
            picked.append((sid, pos))
            picked_pos = pos
        rendered = await asyncio.gather(
            *[render(streams.keys.session(project, sid)) for sid, _ in picked]
        )
        out += [(o, pos) for o, (_, pos) in zip(rendered, picked, strict=True) if o is not None]
        if src.done and not more:
            break
    if more:
        pos = picked_pos
    elif src.done or budget > 0:
        return [o for o, _ in out], None
    else:  # the scan budget ran out: a short page that goes on where the scan stopped
        pos = last_pos
    if q.sort == "created":
        cursor.keyset = pos
    else:
        cursor.offset = pos
    return [o for o, _ in out], encode_cursor(cursor)
