"""A runner replica: wires the loops together; lifecycle, signals and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Mapping
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry

from streamward.core import tracing
from streamward.core.backoff import backoff_s
from streamward.lua import autopipe
from streamward.lua.client import RedisClient, connect_from_config, connect_sync
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.lua.syncrenew import SyncReplicaRenewal
from streamward.runner.actor import SessionActor
from streamward.runner.config import RunnerSettings
from streamward.runner.heartbeat import LeaseRenewer, ReplicaHeartbeat
from streamward.runner.ingest_http import IngestHTTP
from streamward.runner.intake import WorkIntake, WorkReclaimer
from streamward.runner.lease import ReplicaLease
from streamward.runner.lifecycle import HandlerSpec
from streamward.runner.loop import Loop
from streamward.runner.mailbox import InboxSweep, Mailbox
from streamward.runner.metrics import Metrics
from streamward.runner.runtrace import TracedStore
from streamward.runner.sessions import SessionBook
from streamward.runner.shipper import HttpPoster
from streamward.runner.state import ReplicaState
from streamward.runner.watchdog import Watchdog

log = logging.getLogger("streamward.runner")

INTERRUPT_WAIT_S = 5.0
STEP_WAIT_S = 5.0


def _log_tasks() -> None:
    """Log every pending task and where it waits (diagnosing a shutdown that hangs)."""
    current = asyncio.current_task()
    for t in asyncio.all_tasks():
        if t is not current and not t.done():
            frames = t.get_stack(limit=4)
            where = " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            log.warning("still running: %s at %s", t.get_name(), where or "-")


class Replica:
    """One runner process: ``await start()``, then ``await stop()`` (idempotent) drains it.

    It builds the pieces and hands each what it needs: the shared ``ReplicaState``, the
    ``SessionBook`` (owned sessions, claims), the ``ReplicaLease`` (registration, fencing)
    and the loops. No other runner module imports this one.
    """

    def __init__(
        self, settings: RunnerSettings, handler: HandlerSpec | Mapping[str, HandlerSpec]
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.replica_id = settings.replica_id
        self.state = ReplicaState(settings.replica_id)
        self.keys = Keys(settings.key_prefix)
        self.metrics = Metrics()
        self.shutdown = asyncio.Event()
        self.hurry = asyncio.Event()  # a second signal: stop waiting for runs to finish
        self._loops: list[Loop] = []
        self._stopping: asyncio.Task[None] | None = None
        self._client: RedisClient | None = None
        self._http: HttpPoster | None = None
        self._sessions: SessionBook | None = None
        self._lease: ReplicaLease | None = None

    # -- what tests and operators look at -----------------------------------------------------

    @property
    def incarnation(self) -> str:
        return self.state.incarnation

    @property
    def fenced(self) -> bool:
        return self.state.fenced

    @property
    def draining(self) -> bool:
        return self.state.draining

    @property
    def actors(self) -> dict[str, SessionActor]:
        return self._sessions.actors if self._sessions is not None else {}

    def can_write(self) -> bool:
        """False once past the self-fencing deadline (checked before every ingest request)."""
        return self.state.can_write()

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM / SIGINT / a drain mail, then drain; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        try:
            await self.start()
            await self.shutdown.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.shutdown.is_set():
            log.warning("%s again: interrupting the runs still going", name)
            self.hurry.set()
            _log_tasks()  # what the drain is waiting for: the first thing to look at
        else:
            self.request_shutdown(name)

    def request_shutdown(self, why: str) -> None:
        if not self.shutdown.is_set():
            log.info("shutdown requested (%s): draining", why)
            self.shutdown.set()
            self._begin_drain()

    def _begin_drain(self) -> None:
        """Stop claiming and tell every actor, before any await: a mail or wake handled
        after the signal must not start another run here."""
        self.state.begin_drain()
        self.metrics.draining.set(1)
        if self._sessions is not None:
            self._sessions.drain()

    async def start(self) -> None:
        """Connect, register a fresh incarnation (waiting for Redis), start the loops."""
        s = self.settings
        self._client = connect_from_config(
            s.redis_config(),  # standalone, Sentinel or Cluster (STREAMWARD_REDIS_MODE)
            socket_connect_timeout=1.0,
            # above the 1 s blocking reads; the heartbeat bounds its own calls tighter
            socket_timeout=5.0,
            # one quick retry for a dropped connection; the loops do their own backoff
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        )
        if s.redis_autopipeline:  # actors woken together peek / complete in one round trip
            self.metrics.autopipeline.ap = autopipe.enable(self._client)
        # tracing on: a run's Redis writes are spans of its trace (runner/runtrace.py)
        store = (TracedStore if tracing.TRACING_ON else LeaseStore)(self._client, self.keys)
        streams = Streams(self._client, self.keys)
        # the shippers' one client (aiohttp); their concurrent posts leave as one request
        self._http = IngestHTTP(connect_timeout_s=1.0, coalesce=s.ship_coalesce)
        st, m = self.state, self.metrics
        sessions = SessionBook(st, s, self.keys, store, streams, self._http, m, self.handler)
        mailbox = Mailbox(st, self.keys, streams, sessions, self.request_shutdown)
        lease = ReplicaLease(st, s, store, streams, m, sessions, mailbox.reset)
        self._sessions, self._lease = sessions, lease
        failures = 0
        while not self.shutdown.is_set():
            try:
                await lease.register()
                for session_type in sessions.types:
                    await streams.ensure_work_group(session_type)
                break
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    where = s.redis_config().describe()
                    log.warning("cannot register with %s yet (%r); retrying", where, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.shutdown.wait(), backoff_s(failures))
        else:
            return
        self._loops = [
            ReplicaHeartbeat(st, s, lease, self._sync_renewal()),
            LeaseRenewer(st, s, store, streams, m, sessions),
            *(WorkIntake(st, streams, sessions, t) for t in sessions.types),
            *(WorkReclaimer(st, s, streams, sessions, t) for t in sessions.types),
            mailbox,
            Watchdog(
                st, s.replica_ttl_ms, self.keys, store, streams, s.sweep_interval_s, self.metrics
            ),
            InboxSweep(st, s, streams, sessions),
        ]
        for loop in self._loops:
            loop.start()
        log.info(
            "replica %s up: types %s, handler %s, max %d sessions, replica ttl %d ms, api %s",
            self.replica_id, ",".join(sessions.types), s.handler, s.max_sessions,
            s.replica_ttl_ms, s.api_url,
        )  # fmt: skip

    def _sync_renewal(self) -> SyncReplicaRenewal:
        """The heartbeat thread's own connection, built like the async client."""
        s = self.settings
        client = connect_sync(
            s.redis_config(),
            socket_connect_timeout=1.0,
            socket_timeout=max(0.1, s.replica_ttl_ms / 2000),  # a dead socket fails the tick
            retry=SyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        )
        return SyncReplicaRenewal(client, self.keys)

    async def stop(self) -> None:
        """Drain and shut down; safe to call more than once (later calls wait for the first)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        self.shutdown.set()
        self._begin_drain()
        lease = self._lease
        if lease is not None and not self.state.fenced:
            # show draining=1 now rather than at the next heartbeat
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(lease.renew(), timeout=1.0)
        actors = self.actors
        running = sum(1 for a in actors.values() if a.running)
        log.info("draining %d sessions (%d runs in flight)", len(actors), running)
        await self._wait_actors(loop.time() + s.drain_timeout_s)
        if self.actors:
            left = list(self.actors.values())
            log.warning("drain timeout: interrupting %d runs", len(left))
            await asyncio.wait(
                [asyncio.create_task(a.interrupt()) for a in left], timeout=INTERRUPT_WAIT_S
            )
        clean = not self.actors and not self.state.fenced
        if self._loops:
            stops = asyncio.gather(*(lp.stop() for lp in self._loops))
            await self._bounded("stopping the loops", stops, STEP_WAIT_S)
        self._loops = []
        if lease is not None:
            lease.stop_timer()
            if self.state.incarnation:
                await self._bounded(
                    "deleting the replica lease", lease.unregister(clean), STEP_WAIT_S
                )
        with contextlib.suppress(OSError):
            s.heartbeat_file_path.unlink(missing_ok=True)
        if self._http is not None:
            await self._bounded("closing the HTTP client", self._http.aclose(), STEP_WAIT_S)
        if self._client is not None:
            await self._bounded("closing the Redis client", self._client.aclose(), STEP_WAIT_S)
        log.info("replica %s stopped", self.replica_id)

    async def _bounded(self, what: str, aw: Awaitable[Any], timeout_s: float) -> None:
        """One shutdown step, given up (and reported) when it hangs: the process must exit."""
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("shutdown: %s failed: %r", what, task.exception())
            return
        task.cancel()
        log.warning("shutdown: %s did not finish in %.0fs; going on", what, timeout_s)
        _log_tasks()

    async def _wait_actors(self, deadline: float) -> None:
        """Wait until every actor has left, the deadline passes, or a second signal comes."""
        loop = asyncio.get_running_loop()
        if not self.actors:
            return
        waiters = {asyncio.ensure_future(a.closed.wait()) for a in self.actors.values()}
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(waiters)
            while pending and (remaining := deadline - loop.time()) > 0:
                done, _ = await asyncio.wait(
                    pending | {hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if hurry in done:
                    break
                pending -= done
        finally:
            for w in (*waiters, hurry):
                w.cancel()
