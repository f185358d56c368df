"""Transcript shipping: one ordered, batched, retrying sender per owned session."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import orjson

from streamward.core import tracing
from streamward.core.backoff import backoff_s
from streamward.core.contract import (
    RUN_INTERRUPTED,
    RUN_STARTED,
    TERMINAL_TYPES,
    Entry,
    IngestEncoder,
    advance_body,
)
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import InboxPeek
from streamward.lua.store import Advance
from streamward.runner import runtrace
from streamward.runner.ingest_http import IngestHTTP, IngestHTTPError, answer_peek, problem_code
from streamward.runner.offloop import dumps

# the replica's aiohttp client, or httpx (some tests): the same post() signature
HttpPoster = httpx.AsyncClient | IngestHTTP

log = logging.getLogger("streamward.runner.shipper")

# a run's first entry gates the caller's 202: instead of the timed linger, the sender gives
# a fast handler this many loop turns to add its outputs and terminal entry (an echo run
# needs ~5), so such a run still ships as one request, and a slow one's start is not delayed
START_SPINS = 16
# shipped without lingering: nothing more of their run follows soon (an interrupted run is
# re-run by the next owner, not by this one)
_FINAL_TYPES = TERMINAL_TYPES | {RUN_INTERRUPTED}
# an API that refused the advance field (422: an older API) is not asked again for this
# long, by any shipper of this process (by ingest url)
NO_ADVANCE_S = 60.0
_NO_ADVANCE_UNTIL: dict[str, float] = {}


class ShipStopped(Exception):
    """The shipper will not send anything more for this session."""


class StaleOwner(ShipStopped):
    """The API answered 409 ``stale_token`` (a newer owner exists) or ``not_owner`` (the
    lease names someone else: a token number repeated after a Redis failover)."""


class Fenced(ShipStopped):
    """This replica is past its self-fencing deadline: it must not write."""


class ShipRejected(ShipStopped):
    """The API refused a batch for a reason retrying cannot fix (e.g. ``seq_gap``)."""


_NO_ANSWER: tuple[type[Exception], ...] = (httpx.HTTPError, IngestHTTPError)
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


class Shipper:
    """Assigns the session's seqs and ships entries in order; never reorders or skips one.

    ``put`` is the only place seqs are assigned, so the shipped order is the put order. The
    sender sends one batch at a time (consecutive entries of one run, after a short linger)
    and retries it until the API accepts it; the endpoint is idempotent by seq, so a retry
    after a lost answer never duplicates an entry.
    """

    def __init__(
        self,
        *,
        http: HttpPoster,
        url: str,
        admin_token: str | None,
        session: SessionKeys,
        token: int,
        next_seq: int,
        can_write: Callable[[], bool],
        on_stop: Callable[[ShipStopped], None] | None = None,
        linger_s: float = 0.005,
        batch_max: int = 500,
        batch_max_bytes: int = 512 * 1024,
        buffer_max: int = 1000,
        entry_max_bytes: int = 900 * 1024,
        timeout_s: float = 5.0,
        on_retry: Callable[[], None] | None = None,
        replica_id: str | None = None,
        incarnation: str | None = None,
    ) -> None:
        self.http = http
        self.url = url
        self.headers = {"content-type": "application/json"}
        if admin_token:
            self.headers["authorization"] = f"Bearer {admin_token}"
        self.session = session
        self.token = token
        self.replica_id = replica_id
        # run id -> trace context its ingest requests carry (only runs with one: trace_run)
        self.traces: dict[str, tuple[str, Any]] = {}
        self._next_seq = next_seq
        self.can_write = can_write
        self.on_stop = on_stop
        self.on_retry = on_retry
        self.linger_s = linger_s
        self.batch_max = batch_max
        self.batch_max_bytes = batch_max_bytes
        self.buffer_max = buffer_max
        self.entry_max_bytes = entry_max_bytes
        self.timeout_s = timeout_s
        # entries whose data is an orjson.Fragment: JSON serialised once, at put() time
        self._queue: deque[Entry] = deque()
        self._sizes: dict[int, int] = {}  # seq -> bytes of a queued entry's data
        self._acked_seq = next_seq - 1
        self._error: ShipStopped | None = None
        self._cond = asyncio.Condition()
        self._has_items = asyncio.Event()
        # entries up to this seq ship without lingering (a final entry, or a flush waits)
        self._urgent_seq = 0
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # flush(advance=...): the seq whose post carries it, its IngestAdvance body, and
        # whether it is still wanted; then the peek of the post that did it
        self._advance: tuple[int, dict[str, Any], Callable[[], bool]] | None = None
        self._advanced: InboxPeek | None = None
        self._encoder = IngestEncoder(
            session_id=session.session_id,
            project=session.project,
            token=token,
            replica_id=replica_id,
            incarnation=incarnation,
        )

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sender(), name=f"ship {self.session.ref}")

    async def close(self) -> None:
        """Stop sending (unsent entries are dropped: the caller gave up the session)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._error is None:
            self._error = ShipStopped("shipper closed")
        async with self._cond:
            self._cond.notify_all()

    async def put(self, run_id: str, type: str, data: Any) -> int:
        """Queue one entry; returns its seq. Waits while the buffer is full (backpressure).

        Raises TypeError when ``data`` is not JSON-serialisable, ShipStopped when stopped.
        """
        raw = await dumps(data)  # raises (a TypeError) for data that is not JSON
        if len(raw) > self.entry_max_bytes:
            log.warning(
                "session %s run %s: %s entry of %d bytes replaced by a truncation marker",
                self.session.ref, run_id, type, len(raw),
            )  # fmt: skip
            raw = orjson.dumps({"truncated": True, "bytes": len(raw)})
        if self._error is not None:
            raise self._error
        if len(self._queue) >= self.buffer_max:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: self._error is not None or len(self._queue) < self.buffer_max
                )
            if self._error is not None:
                raise self._error
        seq = self._next_seq
        self._next_seq += 1
        self._queue.append(Entry(seq, type, orjson.Fragment(raw), run_id=run_id))
        self._sizes[seq] = len(raw)
        self._has_items.set()
        if type in _FINAL_TYPES:
            self._hurry(seq)
        return seq

    def _hurry(self, seq: int) -> None:
        if seq > self._urgent_seq:
            self._urgent_seq = seq
            self._urgent.set()

    def _head_urgent(self) -> bool:
        return bool(self._queue) and self._queue[0].seq <= self._urgent_seq

    async def flush(
        self,
        timeout_s: float | None = None,
        *,
        advance: Advance | None = None,
        still: Callable[[], bool] = lambda: True,
    ) -> InboxPeek | None:
        """Wait until everything put so far is stored in the log. Raises ShipStopped.
        ``advance`` (as advanceInbox's: inbox entry id, count, announce): the post of the
        last entries also consumes that input after storing them and peeks the next
        (ingestAdvance-7), while ``still()``; returns that peek, or None if no post did."""
        target = self._next_seq - 1
        if advance is None:  # (leaves another caller's advance alone)
            await self._flush(target, timeout_s)
            return None
        self._advanced = None
        if self._acked_seq < target:
            self._advance = (target, advance_body(*advance), still)
        try:
            await self._flush(target, timeout_s)
        finally:
            self._advance = None
        peek, self._advanced = self._advanced, None
        return peek

    async def _flush(self, target: int, timeout_s: float | None) -> None:
        self._hurry(target)  # someone waits: stop lingering

        async def wait() -> None:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: self._error is not None or self._acked_seq >= target
                )

        if self._acked_seq < target:
            if timeout_s is None:
                await wait()
            else:
                await asyncio.wait_for(wait(), timeout_s)
        if self._acked_seq < target and self._error is not None:
            raise self._error

    # -- sender ------------------------------------------------------------------------------

    async def _sender(self) -> None:
        try:
            while True:
                await self._has_items.wait()
                await self._linger()
                batch = self._take()
                await self._send(batch)
                for _ in batch:
                    del self._sizes[self._queue.popleft().seq]
                self._acked_seq = batch[-1].seq
                if not self._queue:
                    self._has_items.clear()
                async with self._cond:
                    self._cond.notify_all()
        except ShipStopped as exc:
            await self._stopped(exc)
        except Exception as exc:
            # unexpected: stop as if refused, so flush() waiters wake and the actor lets the
            # session go (another owner re-runs what was not stored) instead of hanging on it
            log.exception("session %s: shipper crashed", self.session.ref)
            await self._stopped(ShipStopped(f"shipper crashed: {type(exc).__name__}: {exc}"))

    async def _stopped(self, exc: ShipStopped) -> None:
        self._error = exc
        async with self._cond:
            self._cond.notify_all()
        if self.on_stop is not None:
            self.on_stop(exc)

    async def _linger(self) -> None:
        """Coalesce: a handler yielding quickly fills one request, not many."""
        if self.linger_s <= 0 or len(self._queue) >= self.batch_max or self._head_urgent():
            return
        if self._queue[0].type == RUN_STARTED:
            for _ in range(START_SPINS):
                await asyncio.sleep(0)
                if self._head_urgent() or len(self._queue) >= self.batch_max:
                    return
            return
        self._urgent.clear()
        if self._head_urgent():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._urgent.wait()

    def _take(self) -> list[Entry]:
        """The head of the queue: consecutive entries of one run within the batch limits."""
        head = self._queue[0]
        batch = [head]
        sizes = self._sizes
        size = sizes[head.seq]
        for item in itertools.islice(self._queue, 1, self.batch_max):
            if item.run_id != head.run_id or size + sizes[item.seq] > self.batch_max_bytes:
                break
            batch.append(item)
            size += sizes[item.seq]
        return batch

    async def _send(self, batch: list[Entry]) -> None:
        attempt = 0
        while True:
            # checked right before every request: after a SIGSTOP/SIGCONT the loop may run
            # this before the heartbeat task notices the deadline passed
            if not self.can_write():
                raise Fenced("replica is fenced: not shipping")
            advance = self._advance_for(batch)
            carry = advance is not None
            try:
                resp = await self._post(batch, advance)
            except _NO_ANSWER as exc:
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a client bug must not end shipping silently: retried
                if attempt == 0:
                    log.exception("session %s: ingest request raised", self.session.ref)
                why = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    if carry:
                        self._advanced = answer_peek(resp)
                    return
                code = problem_code(resp)
                if resp.status_code == 422 and carry and "advance" in resp.text:
                    # an API from before ingestAdvance (the field unknown): once per replica
                    _NO_ADVANCE_UNTIL[self.url] = time.monotonic() + NO_ADVANCE_S
                    continue
                if resp.status_code == 409 and code in ("stale_token", "not_owner"):
                    raise StaleOwner(
                        f"session {self.session.ref}: token {self.token} refused ({code})"
                    )
                if resp.status_code == 413 and len(batch) > 1:
                    del batch[max(1, len(batch) // 2) :]  # halve and retry at once
                    continue
                if resp.status_code == 413:
                    marker = orjson.dumps({"truncated": True, "bytes": self._sizes[batch[0].seq]})
                    batch[0] = dataclasses.replace(batch[0], data=orjson.Fragment(marker))
                    continue
                if resp.status_code not in (401, 403, 408, 429) and resp.status_code < 500:
                    raise ShipRejected(
                        f"session {self.session.ref}: ingest refused with {resp.status_code} "
                        f"{code}: {resp.text[:300]}"
                    )
                why = f"HTTP {resp.status_code} {code}"
            delay = backoff_s(attempt)
            attempt += 1
            if self.on_retry is not None:
                self.on_retry()
            level = logging.WARNING if attempt in (1, 10) or attempt % 50 == 0 else logging.DEBUG
            log.log(
                level,
                "session %s: ingest of seq %d..%d failed (%s); retry %d in %.2fs",
                self.session.ref, batch[0].seq, batch[-1].seq, why, attempt, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _advance_for(self, batch: list[Entry]) -> dict[str, Any] | None:
        """The advance this post carries: only the one with the flush's last entry, while
        its caller still wants it and the API has not refused the field lately."""
        adv = self._advance
        if adv is None or adv[0] != batch[-1].seq or not adv[2]():
            return None
        return adv[1] if time.monotonic() >= _NO_ADVANCE_UNTIL.get(self.url, 0.0) else None

    async def _post(self, batch: list[Entry], advance: dict[str, Any] | None) -> Any:
        content = self._encoder.encode(batch[0].run_id, batch, advance)
        trace = self.traces.get(batch[0].run_id) if self.traces else None
        if trace is None:
            return await self.http.post(
                self.url, content=content, headers=self.headers, timeout=self.timeout_s
            )
        with runtrace.ship_span(trace, self.url, batch) if tracing.TRACING_ON else _NO_SPAN as span:
            headers = runtrace.ship_headers(self.headers, trace)
            resp = await self.http.post(
                self.url, content=content, headers=headers, timeout=self.timeout_s
            )
            runtrace.note_status(span, resp.status_code)
            return resp

    def trace_run(self, item: InboxItem, attempt: int) -> AbstractContextManager[None]:
        """Around one run: its span, its batches' trace context (runner/runtrace.py)."""
        if not (tracing.TRACING_ON or item.traceparent):
            return _NO_SPAN  # tracing off and no caller's trace: nothing to carry
        return runtrace.run_scope(self, item, attempt)
