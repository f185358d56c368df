"""Asyncio load generator: detached and streamed invokes at a steady rate over several APIs.

Used by the chaos suite (``api/chaos.py``) and reusable for anything that needs clients
hammering a fleet while it is being disturbed (rolling updates, failovers). What it does:

* **Steady rate.** ``run()`` starts one *logical invoke* every ``1 / rate_per_s`` seconds on a
  session drawn from ``session_ids`` (seeded), streamed with probability ``stream_fraction``,
  else detached. Inputs are small echo inputs (``chunks`` outputs, ``delay_ms`` drawn from a
  range) so a run lasts long enough to be cut by a fault.
* **Never lost from the client's view, never run twice.** Every logical invoke carries its
  own ``idempotency_key``. A submit that fails without an answer (connection refused or
  reset, timeout, a stream cut before its first line) or with a 5xx / 429 is sent again, with
  the same key, to the *next* API in the list, until it is acknowledged or
  ``submit_deadline_s`` passes. The API maps the key to the run id it minted the first time,
  so a retry after a lost answer can never enqueue a second run.
* **Acknowledged** means: detached, a 202 (``running``, ``queued`` or an already-finished
  status from an idempotent repeat); streamed, the first NDJSON line of the run arrived.
  One ``InvokeRecord`` per logical invoke (acked or not) lands in ``records``.
* **Streams after their ack** are followed to the run's terminal entry; a cut connection
  is resumed with ``GET /v1/sessions/{id}/events?after=<last id>&run_id=...&follow=true`` on
  the next API. Whether a stream is followed to its end does not change the record: the
  chaos checker reads the session logs for the terminal entry.
* ``burst(session_id, n)`` fires ``n`` logical invokes at one session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from streamward.core.contract import TERMINAL_STATUSES
from streamward.core.contract import TERMINAL_TYPES as TERMINAL
from streamward.lua.keys import Keys
from streamward.tools.chaos_check import InvokeRecord

RUN_HEADER = "X-Streamward-Run-Id"
# answers worth asking again (the same key, another instance): the API or Redis is
# restarting, overloaded, or a proxy gave up; everything else 4xx is the caller's fault
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class LoadConfig:
    """What to send, where, and how patiently."""

    api_urls: Sequence[str]
    session_ids: Sequence[str]
    rate_per_s: float = 10.0
    stream_fraction: float = 0.3
    seed: int = 0
    project: str = "default"  # only for the ``project/session_id`` refs in the records
    token: str | None = None  # public API bearer token (None: the API runs without auth)
    # keep re-sending an unacknowledged invoke this long (a stream waiting for its first
    # line counts: a run queued behind a burst may start late)
    submit_deadline_s: float = 60.0
    # one detached request: the API itself answers ``queued`` after START_TIMEOUT_S (10 s)
    detached_timeout_s: float = 20.0
    connect_timeout_s: float = 3.0
    max_inflight: int = 400  # unacknowledged invokes at once; the rate loop waits above it
    chunks: int = 3
    delay_ms_range: tuple[int, int] = (50, 300)
    key_prefix: str = "lg"  # idempotency keys are ``<key_prefix>-<seed>-<n>``

    def __post_init__(self) -> None:
        if not self.api_urls:
            raise ValueError("need at least one API URL")
        if not self.session_ids:
            raise ValueError("need at least one session id")
        if self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")
        if not 0.0 <= self.stream_fraction <= 1.0:
            raise ValueError(f"stream_fraction must be within [0, 1], got {self.stream_fraction}")


@dataclass
class LoadStats:
    """Counters of what the generator did (records hold the per-invoke truth)."""

    sent: int = 0  # logical invokes started
    acked: int = 0
    gave_up: int = 0  # not acknowledged by the deadline, or refused with a 4xx
    resubmits: int = 0  # extra submits of a logical invoke (same idempotency key)
    stream_resumes: int = 0  # /events resumptions after a cut stream
    streams_finished: int = 0  # streams followed to their run's terminal entry
    throttled: int = 0  # rate-loop ticks that waited for ``max_inflight`` to drop
    statuses: Counter[str] = field(default_factory=Counter)  # every answer: "202", "503", "conn"


class _Attempt:
    """Where one logical invoke is: which API to ask next, the last status seen."""

    def __init__(self, n_apis: int, first: int, deadline: float) -> None:
        self.n_apis = n_apis
        self.index = first
        self.deadline = deadline
        self.tries = 0
        self.status: int | None = None

    def rotate(self) -> None:
        self.index = (self.index + 1) % self.n_apis

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


class LoadGen:
    """Steady-rate invokes over several API instances; see the module docstring."""

    def __init__(self, config: LoadConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        # jitter of retry backoffs: not part of the replayed choices
        self._jitter = random.Random(config.seed ^ 0x5EED)
        self.records: list[InvokeRecord] = []
        self.stats = LoadStats()
        self._n = 0
        self._submits: set[asyncio.Task[InvokeRecord]] = set()
        self._followers: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._room = asyncio.Event()  # set when an unacknowledged invoke resolves
        self._headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        # streams idle between entries (and before the run starts): only connecting is bounded
        self._stream_timeout = httpx.Timeout(None, connect=config.connect_timeout_s, pool=30.0)
        # a few hundred requests at once: unacknowledged invokes plus followed streams
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=2 * config.max_inflight + 100, max_keepalive_connections=200
            ),
            timeout=httpx.Timeout(
                config.detached_timeout_s, connect=config.connect_timeout_s, pool=30.0
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LoadGen:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self, duration_s: float | None = None) -> None:
        """Run the steady-rate loop in the background until ``stop()`` (or ``duration_s``)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self.run(duration_s))

    async def stop(self) -> None:
        """Stop starting new invokes (those in flight go on)."""
        self._stop.set()
        if self._runner is not None:
            await self._runner

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted invoke is acknowledged or given up; False on timeout."""
        pending = set(self._submits)
        if not pending:
            return True
        _, left = await asyncio.wait(pending, timeout=timeout_s)
        return not left

    async def wait_streams(self, timeout_s: float | None = None) -> int:
        """Wait for followed streams to reach their terminal entry; the number still open."""
        pending = set(self._followers)
        if not pending:
            return 0
        _, left = await asyncio.wait(pending, timeout=timeout_s)
        return len(left)

    async def aclose(self) -> None:
        """Stop everything: the rate loop, unacknowledged submits, followed streams."""
        self._stop.set()
        tasks: list[asyncio.Task[Any]] = [*self._submits, *self._followers]
        if self._runner is not None:
            tasks.append(self._runner)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.aclose()

    # -- load -------------------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> None:
        """Start one logical invoke every ``1 / rate_per_s`` seconds until stopped."""
        loop = asyncio.get_running_loop()
        interval_s = 1.0 / self.cfg.rate_per_s
        end = None if duration_s is None else loop.time() + duration_s
        next_t = loop.time()
        while not self._stop.is_set() and (end is None or loop.time() < end):
            if len(self._submits) >= self.cfg.max_inflight:
                self.stats.throttled += 1
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.5)
                next_t = loop.time()  # a steady rate from here, not a catch-up burst
                continue
            sid = self.rng.choice(self.cfg.session_ids)
            self.submit(sid, self._pick_mode())
            next_t += interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_t - loop.time()))

    def _pick_mode(self) -> str:
        return "stream" if self.rng.random() < self.cfg.stream_fraction else "detached"

    def _input(self) -> dict[str, Any]:
        lo, hi = self.cfg.delay_ms_range
        return {
            "text": f"lg{self._n}",
            "chunks": self.cfg.chunks,
            "delay_ms": self.rng.randint(lo, hi),
        }

    def submit(
        self, session_id: str, mode: str = "detached", input: Any = None
    ) -> asyncio.Task[InvokeRecord]:
        """Start one logical invoke in the background; the task's result is its record."""
        if mode not in ("detached", "stream"):
            raise ValueError(f"mode must be 'detached' or 'stream', got {mode!r}")
        self._n += 1
        key = f"{self.cfg.key_prefix}-{self.cfg.seed}-{self._n}"
        body = {
            "input": self._input() if input is None else input,
            "mode": mode,
            "idempotency_key": key,
        }
        first_api = self.rng.randrange(len(self.cfg.api_urls))
        task = asyncio.create_task(self._logical(session_id, mode, body, key, first_api))
        self._submits.add(task)
        task.add_done_callback(self._submit_done)
        return task

    def _submit_done(self, task: asyncio.Task[InvokeRecord]) -> None:
        self._submits.discard(task)
        self._room.set()

    async def invoke(
        self, session_id: str, mode: str = "detached", input: Any = None
    ) -> InvokeRecord:
        """One logical invoke; returns its record once acknowledged or given up."""
        return await self.submit(session_id, mode, input)

    async def burst(self, session_id: str, n: int) -> list[InvokeRecord]:
        """``n`` logical invokes at one session at once (modes drawn as for the steady load)."""
        tasks = [self.submit(session_id, self._pick_mode()) for _ in range(n)]
        return list(await asyncio.gather(*tasks))

    # -- one logical invoke -----------------------------------------------------------------

    async def _logical(
        self, session_id: str, mode: str, body: dict[str, Any], key: str, first_api: int
    ) -> InvokeRecord:
        self.stats.sent += 1
        sent_ns = time.time_ns()
        att = _Attempt(
            len(self.cfg.api_urls), first_api, time.monotonic() + self.cfg.submit_deadline_s
        )
        if mode == "detached":
            run_id, acked_ns = await self._detached(session_id, body, att)
        else:
            run_id, acked_ns = await self._stream(session_id, body, att)
        acked = acked_ns is not None
        if acked:
            self.stats.acked += 1
        else:
            self.stats.gave_up += 1
        rec = InvokeRecord(
            session=f"{self.cfg.project}/{session_id}",
            run_id=run_id,
            mode=mode,
            acked=acked,
            api=self.cfg.api_urls[att.index],
            sent_ns=sent_ns,
            acked_ns=acked_ns,
            status=att.status,
            idempotency_key=key,
        )
        self.records.append(rec)
        return rec

    async def _backoff(self, att: _Attempt, retry_after_s: float | None = None) -> bool:
        """Sleep before the next try (on the next API); False when the deadline has passed."""
        att.tries += 1
        # the first retry goes to the other instance at once (the usual case: one API died);
        # later ones back off, since then Redis or the whole fleet is the problem
        delay_s = 0.0 if att.tries == 1 else min(1.0, 0.05 * 2 ** (att.tries - 1))
        if retry_after_s is not None:
            delay_s = max(delay_s, min(retry_after_s, 1.0))
        delay_s = delay_s / 2 + self._jitter.uniform(0, delay_s / 2)
        if att.left_s() <= delay_s:
            return False  # the record names the API asked last
        att.rotate()
        self.stats.resubmits += 1
        await asyncio.sleep(delay_s)
        return True

    def _url(self, att: _Attempt, session_id: str) -> str:
        return f"{self.cfg.api_urls[att.index].rstrip('/')}/v1/sessions/{session_id}/invoke"

    async def _detached(
        self, session_id: str, body: dict[str, Any], att: _Attempt
    ) -> tuple[str | None, int | None]:
        content = orjson.dumps(body)
        run_id: str | None = None
        while True:
            retry_after: float | None = None
            try:
                resp = await self.http.post(
                    self._url(att, session_id), content=content, headers=self._headers
                )
            except httpx.TransportError:
                att.status = None
                self.stats.statuses["conn"] += 1
            else:
                att.status = resp.status_code
                self.stats.statuses[str(resp.status_code)] += 1
                run_id = resp.headers.get(RUN_HEADER) or run_id
                if resp.status_code == 202:
                    data = orjson.loads(resp.content)
                    return str(data.get("run_id") or run_id), time.time_ns()
                if resp.status_code not in RETRY_STATUSES:
                    return run_id, None
                retry_after = _retry_after(resp)
            if not await self._backoff(att, retry_after):
                return run_id, None

    async def _stream(
        self, session_id: str, body: dict[str, Any], att: _Attempt
    ) -> tuple[str | None, int | None]:
        """Submit until the first line arrives; then hand the rest of the stream to a follower."""
        content = orjson.dumps(body)
        run_id: str | None = None
        while True:
            retry_after: float | None = None
            left_s = att.left_s()
            if left_s <= 0:
                return run_id, None
            req = self.http.build_request(
                "POST",
                self._url(att, session_id),
                content=content,
                headers=self._headers,
                # the first line comes when the run starts, which may be a while
                timeout=self._stream_timeout,
            )
            resp: httpx.Response | None = None
            try:
                async with asyncio.timeout(left_s):
                    resp = await self.http.send(req, stream=True)
            except (httpx.TransportError, TimeoutError):
                att.status = None
                self.stats.statuses["conn"] += 1
            if resp is not None:
                att.status = resp.status_code
                self.stats.statuses[str(resp.status_code)] += 1
                run_id = resp.headers.get(RUN_HEADER) or run_id
                if resp.status_code != 200:
                    await _close(resp)
                    if resp.status_code not in RETRY_STATUSES:
                        return run_id, None
                    retry_after = _retry_after(resp)
                else:
                    lines = resp.aiter_lines()
                    first = await self._first_line(lines, att)
                    if first is not None:
                        acked_ns = time.time_ns()
                        task = asyncio.create_task(
                            self._follow(session_id, run_id, first, resp, lines, att.index)
                        )
                        self._followers.add(task)
                        task.add_done_callback(self._followers.discard)
                        return run_id, acked_ns
                    await _close(resp)
            if not await self._backoff(att, retry_after):
                return run_id, None

    async def _first_line(self, lines: AsyncIterator[str], att: _Attempt) -> dict[str, Any] | None:
        """The first entry of the stream, or None (cut, ended, or past the deadline)."""
        try:
            async with asyncio.timeout(max(0.01, att.left_s())):
                async for line in lines:
                    if line.strip():
                        entry: dict[str, Any] = orjson.loads(line)
                        return entry
        except (httpx.TransportError, TimeoutError, orjson.JSONDecodeError):
            pass
        return None

    async def _follow(
        self,
        session_id: str,
        run_id: str | None,
        first: dict[str, Any],
        resp: httpx.Response,
        lines: AsyncIterator[str],
        api_index: int,
    ) -> None:
        """Read a streamed run to its terminal entry, resuming through /events when cut."""
        last_id = str(first.get("id", ""))
        done = first.get("type") in TERMINAL
        try:
            if not done:
                done, last_id = await self._read_until_terminal(lines, last_id)
        finally:
            await _close(resp)
        index = api_index
        while not done and run_id is not None:
            index = (index + 1) % len(self.cfg.api_urls)
            self.stats.stream_resumes += 1
            await asyncio.sleep(0.1 + self._jitter.uniform(0, 0.2))
            url = f"{self.cfg.api_urls[index].rstrip('/')}/v1/sessions/{session_id}/events"
            params = {"after": last_id, "run_id": run_id, "follow": "true"}
            req = self.http.build_request(
                "GET", url, params=params, headers=self._headers, timeout=self._stream_timeout
            )
            try:
                resp = await self.http.send(req, stream=True)
            except httpx.TransportError:
                continue
            try:
                if resp.status_code == 200:
                    done, last_id = await self._read_until_terminal(resp.aiter_lines(), last_id)
            finally:
                await _close(resp)
        if done:
            self.stats.streams_finished += 1

    async def _read_until_terminal(
        self, lines: AsyncIterator[str], last_id: str
    ) -> tuple[bool, str]:
        try:
            async for line in lines:
                if not line.strip():
                    continue
                entry = orjson.loads(line)
                last_id = str(entry.get("id", last_id))
                if entry.get("type") in TERMINAL:
                    return True, last_id
        except (httpx.TransportError, orjson.JSONDecodeError):
            pass
        return False, last_id

    # -- figures ----------------------------------------------------------------------------

    def latency_ms(self) -> dict[str, dict[str, float | int | None]]:
        """Acknowledgement latency (acked_ns - sent_ns) per mode: count, p50, p99, max."""
        out: dict[str, dict[str, float | int | None]] = {}
        for mode in ("detached", "stream"):
            ms = [
                (r.acked_ns - r.sent_ns) / 1e6
                for r in self.records
                if r.mode == mode and r.acked_ns is not None
            ]
            out[mode] = {
                "count": len(ms),
                "p50_ms": round1(percentile(ms, 0.50)),
                "p99_ms": round1(percentile(ms, 0.99)),
                "max_ms": round1(max(ms) if ms else None),
            }
        return out


async def wait_terminal(
    redis_url: str,
    records: Sequence[InvokeRecord],
    timeout_s: float,
    *,
    poll_s: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Wait (at most ``timeout_s``) until every acknowledged run's state in Redis is terminal;
    the number still open. Redis errors (a restart) count as "not yet"; ``progress`` gets the
    number still open every 10 s."""
    keys = Keys()
    pending = {(r.session, r.run_id) for r in records if r.acked and r.run_id}
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    next_say = time.monotonic() + 10
    try:
        while pending and time.monotonic() < deadline:
            items = sorted(pending)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for ref, run_id in items:
                        pipe.hget(keys.session_ref(ref).runs, run_id)
                    states = await pipe.execute()
            except redis.RedisError:
                await asyncio.sleep(poll_s)
                continue
            for item, raw in zip(items, states, strict=True):
                if raw and orjson.loads(raw).get("status") in TERMINAL_STATUSES:
                    pending.discard(item)
            if pending:
                if progress is not None and time.monotonic() >= next_say:
                    next_say = time.monotonic() + 10
                    progress(len(pending))
                await asyncio.sleep(poll_s)
    finally:
        await client.aclose()
    return len(pending)


def round1(v: float | None) -> float | None:
    """``v`` to 0.1 (None stays None): how the figures are reported."""
    return None if v is None else round(v, 1)


def _retry_after(resp: httpx.Response) -> float | None:
    with contextlib.suppress(ValueError):
        return float(resp.headers.get("retry-after", ""))
    return None


async def _close(resp: httpx.Response) -> None:
    with contextlib.suppress(httpx.HTTPError, OSError):
        await resp.aclose()
