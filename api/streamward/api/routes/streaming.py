"""Tailing a session log to an HTTP client: NDJSON or SSE, attached-connection bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from streamward.api.config import Settings
from streamward.api.routes.common import entry_dict
from streamward.lua.keys import SessionKeys
from streamward.lua.streams import LogEntry, Streams

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TAIL_BATCH = 200

Producer = Callable[[asyncio.Event], AsyncGenerator[bytes, None]]


def wants_sse(accept: str | None) -> bool:
    return accept is not None and SSE in accept.lower()


def new_connection_id() -> str:
    return f"conn_{uuid.uuid4().hex}"


class TailResponse(Response):
    """A streaming response that notices a client disconnect while nothing is being sent.

    Starlette's StreamingResponse (ASGI >= 2.4) only learns of a disconnect when a write
    fails; a tail can sit idle for minutes, so we listen on ``receive`` concurrently and the
    producer checks the event between XREAD slices.
    """

    def __init__(
        self, producer: Producer, media_type: str, headers: dict[str, str] | None = None
    ) -> None:
        # no super().__init__: it would set a body and so a Content-Length of 0
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.producer = producer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        listener = asyncio.create_task(listen())
        chunks = self.producer(gone)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in chunks:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write: the run goes on regardless
        finally:
            listener.cancel()
            await chunks.aclose()


@dataclass
class Tail:
    """What one tailing connection follows and where it stops."""

    session: SessionKeys
    after: str
    run_id: str | None = None
    follow: bool = True
    conn_id: str | None = None  # registered in sw:{S}:attached while following
    # the record's engine when configured: a resume below Redis's hot tail reads it first
    record: Any = None


def ndjson_line(entry: LogEntry, session_id: str) -> bytes:
    return orjson.dumps(entry_dict(entry, session_id)) + b"\n"


def sse_event(entry: LogEntry, session_id: str) -> bytes:
    data = orjson.dumps(entry_dict(entry, session_id))
    return b"id: " + entry.id.encode() + b"\ndata: " + data + b"\n\n"


def make_producer(streams: Streams, settings: Settings, tail: Tail, sse: bool) -> Producer:
    """The chunk generator for one tail (entries rendered as NDJSON lines or SSE events)."""
    render = sse_event if sse else ndjson_line
    sid = tail.session.session_id

    async def produce(gone: asyncio.Event) -> AsyncGenerator[bytes, None]:
        try:
            async for item in follow_log(streams, settings, tail, gone, keepalive=sse):
                yield render(item, sid) if item is not None else b": keepalive\n\n"
        finally:
            if tail.conn_id is not None:
                # best effort: the registration expires on its own if this fails
                with contextlib.suppress(RedisError):
                    await streams.detach(tail.session, tail.conn_id)

    return produce


async def _from_archive(
    streams: Streams, tail: Tail, gone: asyncio.Event
) -> AsyncIterator[LogEntry]:
    """The entries after ``tail.after`` that only the archive still has (the hot-tail trim
    removed them from Redis), oldest first; ends where Redis's log continues."""
    from streamward.api.record.reads import span  # the `db` extra: only when configured

    cursor = tail.after
    while not gone.is_set():
        from_redis = await streams.read_log(tail.session, cursor, count=TAIL_BATCH)
        batch = await span(tail.record, streams, tail.session, cursor, TAIL_BATCH, from_redis)
        if batch is from_redis or not batch:
            return  # Redis continues right after the cursor: the usual tail takes over
        for entry in batch:
            cursor = entry.id
            yield entry


async def follow_log(
    streams: Streams, settings: Settings, tail: Tail, gone: asyncio.Event, keepalive: bool
) -> AsyncIterator[LogEntry | None]:
    """Entries after ``tail.after`` (only ``tail.run_id``'s when set), ending at its terminal.

    Yields None as a keep-alive tick when idle for ``sse_keepalive_s``. Ends when the client
    disconnects, its connection is detached, or (``follow`` false) the log end is reached.
    """
    cursor = tail.after
    if tail.record is not None:
        async for entry in _from_archive(streams, tail, gone):
            cursor = entry.id
            if tail.run_id is not None and entry.run_id != tail.run_id:
                continue
            yield entry
            if tail.run_id is not None and entry.terminal:
                return
    ttl_ms = int(settings.attach_ttl_s * 1000)
    now = time.monotonic()
    next_refresh = now + settings.attach_refresh_s
    next_keepalive = now + settings.sse_keepalive_s
    next_check = now + 1.0
    while not gone.is_set():
        if tail.follow:
            batch = await streams.wait_log(
                tail.session, cursor, block_ms=settings.tail_block_ms, count=TAIL_BATCH
            )
        else:
            batch = await streams.read_log(tail.session, cursor, count=TAIL_BATCH)
        for entry in batch:
            cursor = entry.id
            if tail.run_id is not None and entry.run_id != tail.run_id:
                continue
            yield entry
            if tail.run_id is not None and entry.terminal:
                return
        now = time.monotonic()
        if batch:
            next_keepalive = now + settings.sse_keepalive_s
        elif not tail.follow:
            return
        elif keepalive and now >= next_keepalive:
            next_keepalive = now + settings.sse_keepalive_s
            yield None
        if tail.conn_id is not None and (not batch or now >= next_check):
            # checked on every idle slice and at least once a second while entries flow,
            # so a detach ends the stream promptly
            next_check = now + 1.0
            if now >= next_refresh:
                next_refresh = now + settings.attach_refresh_s
                still = await streams.refresh_attached(tail.session, tail.conn_id, ttl_ms)
            else:
                still = await streams.is_attached(tail.session, tail.conn_id)
            if not still:
                return
