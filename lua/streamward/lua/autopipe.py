"""Auto-pipelining: the script calls a process makes in one event-loop turn leave as one
pipeline (ioredis' ``enableAutoPipelining``, Lettuce's command batching).

A runner wakes many session actors in the same turn (one mail read names several sessions;
one coalesced ingest answer releases several runs), and each then calls a script: peek the
inbox, advance it. Sent one by one, each call pays a socket write and a read in this process
and in ``redis-server``; batched, the whole turn pays one of each. The API's concurrent
invokes do the same with their enqueue pipelines.

Nothing about a call changes but its transport:

- Each call is a **unit**: the commands it would have pipelined itself, kept together and in
  order; units are independent (``transaction=False``, as before: no MULTI). Calls made
  concurrently had no order between them before (each on its own connection) and have none
  now; a caller that awaits one call before the next keeps its order.
- A unit whose head script hit NOSCRIPT did not run (the script cache was lost: a restart,
  failover or ``SCRIPT FLUSH``): its scripts are loaded and it is sent again, after the
  rest of its batch.
  Any other error is that unit's own reply.
- A connection error fails every unit of the batch, as it would have failed each call.
- A unit whose caller was cancelled before the batch left is not sent.

Only standalone and Sentinel clients batch: on Cluster, units of one batch would live in
different slots, so ``enable`` refuses them and calls stay direct.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import DataError, NoScriptError

# one batch at most this many units; a larger turn leaves as several batches
MAX_UNITS = 256


class Loadable(Protocol):
    """What a unit names so its scripts can be loaded after NOSCRIPT (loader.Script)."""

    async def load(self, client: Any) -> None: ...


# queues a unit's commands on the pipeline; returns the scripts they call (loaded on NOSCRIPT)
Build = Callable[[Any], Sequence[Loadable]]
# ``(script name, seconds, ok)``: the batch's round trip, reported per unit (loader's hook)
Timing = Callable[[str, float, bool], None]


@dataclass(slots=True)
class _Unit:
    build: Build
    head: int | None  # the reply whose NOSCRIPT means the unit did not run (None: any)
    future: asyncio.Future[list[Any]]
    size: int = 0  # set when built: how many commands it queued
    scripts: Sequence[Loadable] = ()


class AutoPipeline:
    """Collects units until the loop turn ends, then sends them in one pipeline."""

    def __init__(self, client: Redis) -> None:
        # weakly: the registry below is keyed by the client, which must be able to go
        self._client = weakref.ref(client)
        self._units: list[_Unit] = []
        self._flushing: asyncio.Task[None] | None = None  # will send ``_units``, not yet run
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches sent, and units in them: what the batching achieves
        self.units = 0

    def submit(self, build: Build, head: int | None = 0) -> asyncio.Future[list[Any]]:
        """Queue a unit: ``build`` queues its commands when the batch leaves. Its replies (an
        exception in the place of a failed command, NOSCRIPT of the head handled) arrive
        with the batch's."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._units.append(_Unit(build, head, fut))
        if self._flushing is None or self._flushing.cancelling():
            # a task's first step runs once this turn's callbacks have: the turn's units
            # leave together, and the task that takes them sends them (no second hop
            # through the loop before the write: one turn sooner on a busy loop)
            self._flushing = task = loop.create_task(self._flush())
            self._sending.add(task)
            task.add_done_callback(self._flushed)
        return fut

    async def _flush(self) -> None:
        self._flushing = None
        units, self._units = self._units, []
        try:
            if len(units) <= MAX_UNITS:
                await self._send(units)
                return
            await asyncio.gather(
                *(self._send(units[i : i + MAX_UNITS]) for i in range(0, len(units), MAX_UNITS))
            )
        except asyncio.CancelledError:
            _fail(units, asyncio.CancelledError())  # (a batch whose send never began, too)
            raise

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._flushing is task:  # cancelled before it took its units (the loop closing;
            # a unit submitted once the cancel was pending started a flush task of its own)
            self._flushing = None
            units, self._units = self._units, []
            _fail(units, asyncio.CancelledError())

    async def _send(self, units: list[_Unit]) -> None:
        live = [u for u in units if not u.future.cancelled()]
        if not live:
            return
        self.batches += 1
        self.units += len(live)
        sent, replies = await self._round_trip(live)
        at = 0
        again: list[_Unit] = []
        for u in sent:
            mine, at = replies[at : at + u.size], at + u.size
            if _noscript(mine, u.head):
                # did not run: sent again once its scripts are loaded, unless its caller
                # gave up meanwhile (then nothing of it may run any more)
                if not u.future.cancelled():
                    again.append(u)
            elif not u.future.done():
                u.future.set_result(mine)
        if again:
            await self._resend(again)

    async def _resend(self, units: list[_Unit]) -> None:
        """The units that hit NOSCRIPT, in their order, after loading their scripts once."""
        try:
            loaded: set[int] = set()
            for u in units:
                for s in u.scripts:
                    if id(s) not in loaded:
                        loaded.add(id(s))
                        await s.load(self.client)
        except BaseException as exc:
            _fail(units, exc)
            if not isinstance(exc, Exception):
                raise
            return
        sent, replies = await self._round_trip([u for u in units if not u.future.cancelled()])
        at = 0
        for u in sent:
            mine, at = replies[at : at + u.size], at + u.size
            if not u.future.done():
                u.future.set_result(mine)  # a second NOSCRIPT is the caller's error

    async def _round_trip(self, units: list[_Unit]) -> tuple[list[_Unit], list[Any]]:
        """Send ``units`` as one pipeline: (the units answered, their replies in order). A
        unit that cannot even be queued (its arguments refused by the client) fails alone;
        a failed round trip fails every unit sent."""
        pipe: Any = self.client.pipeline(transaction=False)
        sent: list[_Unit] = []
        for u in units:
            before = len(pipe.command_stack)
            try:
                u.scripts = u.build(pipe)
            except Exception as exc:  # e.g. a wrong key count: this caller's error only
                del pipe.command_stack[before:]
                _fail([u], exc)
                continue
            u.size = len(pipe.command_stack) - before
            sent.append(u)
        if not sent:
            return [], []
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except DataError as exc:
            # one unit's arguments refused while the pipeline was encoded (before anything
            # was sent): send each unit on its own, so only that one fails
            if len(sent) == 1:
                _fail(sent, exc)
                return [], []
            ok: list[_Unit] = []
            replies = []
            for u in sent:
                got, more = await self._round_trip([u])
                ok += got
                replies += more
            return ok, replies
        except BaseException as exc:  # the batch failed as a whole: each caller sees it
            _fail(sent, exc)
            if not isinstance(exc, Exception):
                raise
            return [], []
        return sent, replies

    @property
    def client(self) -> Redis:
        client = self._client()
        if client is None:
            raise RuntimeError("the Redis client of this auto-pipeline is gone")
        return client

    async def stop(self) -> None:
        """Wait for the batches in flight (idempotent)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _fail(units: Sequence[_Unit], exc: BaseException) -> None:
    for u in units:
        if u.future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            u.future.cancel()  # the loop is shutting down
        else:
            u.future.set_exception(exc)


def _noscript(replies: list[Any], head: int | None) -> bool:
    if head is None:
        return any(isinstance(r, NoScriptError) for r in replies)
    return isinstance(replies[head], NoScriptError)


_enabled: weakref.WeakKeyDictionary[Any, AutoPipeline] = weakref.WeakKeyDictionary()


def enable(client: Any) -> AutoPipeline | None:
    """Batch this client's script calls from now on (None: a Cluster client, not batched)."""
    if not isinstance(client, Redis):
        return None
    ap = _enabled.get(client)
    if ap is None:
        ap = _enabled[client] = AutoPipeline(client)
    return ap


def disable(client: Any) -> None:
    _enabled.pop(client, None)


def for_client(client: Any) -> AutoPipeline | None:
    """The client's auto-pipeline, if ``enable`` was called for it."""
    return _enabled.get(client) if _enabled else None


async def execute(client: Any, build: Callable[[Any], object]) -> list[Any]:
    """Plain (non-script) commands that ``build`` queues, as one round trip: a unit of this
    turn's batch when auto-pipelining is on, else a pipeline of their own. Raises the first
    error reply, as ``pipeline.execute()`` does."""
    ap = for_client(client)
    if ap is None:
        pipe = client.pipeline(transaction=False)
        build(pipe)
        return list(await pipe.execute())

    def unit(pipe: Any) -> Sequence[Loadable]:
        build(pipe)
        return ()

    replies = await ap.submit(unit, None)
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


async def timed(name: str, hook: Timing | None, fut: asyncio.Future[list[Any]]) -> list[Any]:
    """Await a unit's replies, reporting the wait to ``hook`` as the call's latency."""
    if hook is None:
        return await fut
    t0 = time.perf_counter()
    ok = False
    try:
        replies = await fut
        ok = True
        return replies
    finally:
        hook(name, time.perf_counter() - t0, ok)
