"""A runner replica: lifecycle, lease book-keeping, claims, self-fencing, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from streamward.core.metrics import version
from streamward.lua.client import RedisClient, connect_from_config
from streamward.lua.errors import LeaseHeld
from streamward.lua.keys import Keys
from streamward.lua.leases import Lease
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.actor import SessionActor
from streamward.runner.config import RunnerSettings
from streamward.runner.context import Handler
from streamward.runner.heartbeat import lease_renewal, replica_heartbeat
from streamward.runner.ingest_http import IngestHTTP
from streamward.runner.intake import inbox_sweep, mailbox, work_autoclaim, work_intake
from streamward.runner.metrics import Metrics
from streamward.runner.shipper import HttpPoster, Shipper, ShipRejected, ShipStopped, backoff_s
from streamward.runner.watchdog import watchdog

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


@dataclass
class _ClaimSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Replica:
    """One runner process: ``await start()``, then ``await stop()`` (idempotent) drains it."""

    def __init__(self, settings: RunnerSettings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        self.replica_id = settings.replica_id
        self.incarnation = ""
        self.keys = Keys(settings.key_prefix)
        self.metrics = Metrics()
        self.actors: dict[str, SessionActor] = {}
        self.orphans: set[str] = set()  # sessions dropped by a fence, re-queued on re-register
        self.mail_cursor = "0-0"
        self.fenced = True  # until registered: nothing may be claimed or written
        self.draining = False
        self.draining_event = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.hurry = asyncio.Event()  # a second signal: stop waiting for runs to finish
        self.deadline = 0.0  # loop time after which this replica must not write
        self._fence_timer: asyncio.TimerHandle | None = None
        self._claim_locks: dict[str, _ClaimSlot] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Task[None] | None = None
        self._client: RedisClient | None = None
        self._store: LeaseStore | None = None
        self._streams: Streams | None = None
        self._http: HttpPoster | None = None

    # -- resources (set by start()) ---------------------------------------------------------

    @property
    def store(self) -> LeaseStore:
        assert self._store is not None, "replica not started"
        return self._store

    @property
    def streams(self) -> Streams:
        assert self._streams is not None, "replica not started"
        return self._streams

    @property
    def http(self) -> HttpPoster:
        assert self._http is not None, "replica not started"
        return self._http

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
        self.draining = True
        self.draining_event.set()
        self.metrics.draining.set(1)
        for actor in list(self.actors.values()):
            actor.drain()

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
        self._store = LeaseStore(self._client, self.keys)
        self._streams = Streams(self._client, self.keys)
        self._http = IngestHTTP(connect_timeout_s=1.0)  # the shipper's client (aiohttp)
        failures = 0
        while not self.shutdown.is_set():
            try:
                await self.register()
                await self.streams.ensure_work_group()
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
        loops: list[Callable[[Replica], Awaitable[None]]] = [
            replica_heartbeat,
            lease_renewal,
            work_intake,
            work_autoclaim,
            mailbox,
            watchdog,
            inbox_sweep,
        ]
        self._tasks = [asyncio.create_task(self._supervise(fn), name=fn.__name__) for fn in loops]
        log.info(
            "replica %s up: handler %s, max %d sessions, replica ttl %d ms, api %s",
            self.replica_id, s.handler, s.max_sessions, s.replica_ttl_ms, s.api_url,
        )  # fmt: skip

    async def _supervise(self, fn: Callable[[Replica], Awaitable[None]]) -> None:
        """Keep a loop alive: a bug in one tick must not silently stop the heartbeat."""
        while True:
            try:
                await fn(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting it", fn.__name__)
                await asyncio.sleep(1.0)

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
        if self._store is not None and not self.fenced:
            # show draining=1 now rather than at the next heartbeat
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(
                    self.store.renew_replica(
                        self.replica_id, self.incarnation, s.replica_ttl_ms, self.status_fields()
                    ),
                    timeout=1.0,
                )
        running = sum(1 for a in self.actors.values() if a.running)
        log.info("draining %d sessions (%d runs in flight)", len(self.actors), running)
        await self._wait_actors(loop.time() + s.drain_timeout_s)
        if self.actors:
            left = list(self.actors.values())
            log.warning("drain timeout: interrupting %d runs", len(left))
            await asyncio.wait(
                [asyncio.create_task(a.interrupt()) for a in left], timeout=INTERRUPT_WAIT_S
            )
        clean = not self.actors and not self.fenced
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await self._bounded("stopping the loops", asyncio.wait(self._tasks), STEP_WAIT_S)
        self._tasks = []
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        if self._streams is not None and self.incarnation:
            await self._bounded("deleting the replica lease", self._unregister(clean), STEP_WAIT_S)
        with contextlib.suppress(OSError):
            s.heartbeat_file_path.unlink(missing_ok=True)
        if self._http is not None:
            await self._bounded("closing the HTTP client", self._http.aclose(), STEP_WAIT_S)
        if self._client is not None:
            await self._bounded("closing the Redis client", self._client.aclose(), STEP_WAIT_S)
        log.info("replica %s stopped", self.replica_id)

    async def _unregister(self, clean: bool) -> None:
        try:
            await self.streams.delete_replica_lease(self.replica_id, self.incarnation)
            if clean and not await self.streams.replica_sessions(self.replica_id):
                await self.streams.forget_replica(self.replica_id)
        except (RedisError, OSError) as exc:
            log.warning("could not delete the replica lease: %r", exc)

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

    # -- replica lease and fencing -------------------------------------------------------------

    async def register(self) -> None:
        """Register a fresh incarnation; re-queue what earlier incarnations held."""
        loop = asyncio.get_running_loop()
        s = self.settings
        refs = set(self.orphans) | set(await self.streams.replica_sessions(self.replica_id))
        incarnation = secrets.token_hex(8)
        sent = loop.time()
        reg = await self.store.register_replica(
            self.replica_id, incarnation, s.replica_ttl_ms, self.register_fields()
        )
        self.incarnation = incarnation
        self.renewed(sent)
        # the old incarnation is dead now: its leases are open to takeover by anyone
        await self.streams.publish_work_many(sorted(refs), "owner_death")
        await self.streams.forget_replica(self.replica_id)  # old index and old mail
        await self.store.renew_replica(
            self.replica_id, incarnation, s.replica_ttl_ms, self.status_fields()
        )  # back into sw:replicas (forget_replica removed it)
        self.mail_cursor = "0-0"
        self.orphans.clear()
        self.fenced = False
        log.info(
            "registered incarnation %s (previous %s); re-queued %d sessions it held before",
            incarnation, reg.previous_incarnation or "-", len(refs),
        )  # fmt: skip

    def renewed(self, sent: float) -> None:
        """A renew sent at loop time ``sent`` succeeded: push the self-fencing deadline."""
        loop = asyncio.get_running_loop()
        self.metrics.heartbeat_last_success.set_to_current_time()
        s = self.settings
        # the lease expires ttl after Redis got the call, which is after we sent it
        self.deadline = sent + (s.replica_ttl_ms - s.fence_margin_ms) / 1000
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        self._fence_timer = loop.call_at(self.deadline, self._deadline_passed)
        with contextlib.suppress(OSError):
            s.heartbeat_file_path.touch()

    def _deadline_passed(self) -> None:
        if self.fenced:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            self.fence("replica lease not renewed before its deadline")
        else:
            # a timer may fire a hair early (uvloop rounds its clock to the ms): look again
            self._fence_timer = loop.call_at(self.deadline, self._deadline_passed)

    def can_write(self) -> bool:
        """False once past the self-fencing deadline (checked before every ingest request)."""
        return not self.fenced and asyncio.get_running_loop().time() < self.deadline

    def fence(self, why: str) -> None:
        """Stop every run at once; nothing is written until a new incarnation registers."""
        log.error("self-fencing: %s", why)
        self._drop_all(why)

    def lose_everything(self, why: str) -> None:
        """The replica lease is gone: drop every session and re-register."""
        log.error("%s: dropping every session", why)
        self._drop_all(why)

    def _drop_all(self, why: str) -> None:
        self.fenced = True
        self.metrics.fenced.inc()
        actors = list(self.actors.values())
        self.actors.clear()
        for actor in actors:
            self.orphans.add(actor.ref)
            actor.drop(why)
        self.metrics.sessions.set(0)

    def register_fields(self) -> dict[str, str]:
        return {
            "host": socket.gethostname(),
            "pod": os.environ.get("POD_NAME", ""),
            "pid": str(os.getpid()),
            "version": version(),
            "capacity": str(self.settings.max_sessions),
            "handler": self.settings.handler,
        }

    def status_fields(self) -> dict[str, str]:
        fields = {
            "leases": str(len(self.actors)),
            "inflight": str(sum(1 for a in self.actors.values() if a.running)),
        }
        # only ever set: the API marks draining=1 too, and a renew must not flip it back
        if self.draining:
            fields["draining"] = "1"
        return fields

    def capacity(self) -> int:
        return self.settings.max_sessions - len(self.actors)

    # -- sessions --------------------------------------------------------------------------------

    async def claim(self, ref: str, reason: str) -> None:
        """Own ``ref``: acquire, take over from a dead holder, or tell the live holder."""
        # one claim per session at a time (work, reclaimed work and mail can race)
        slot = self._claim_locks.get(ref)
        if slot is None:
            slot = self._claim_locks[ref] = _ClaimSlot()
        slot.users += 1
        try:
            async with slot.lock:
                await self._claim(ref, reason)
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._claim_locks[ref]

    async def _claim(self, ref: str, reason: str) -> None:
        s = self.settings
        sk = self.keys.session_ref(ref)
        actor = self.actors.get(ref)
        if actor is not None:
            if not actor.closing:
                actor.on_input()
                return
            await actor.closed.wait()  # it re-queues after release if input is left
        if self.draining or not self.can_write() or self.capacity() <= 0:
            await self.streams.publish_work(ref, reason)
            return
        incarnation = self.incarnation
        try:
            lease = await self.store.acquire(sk, self.replica_id, incarnation, s.lease_ttl_ms)
            self.metrics.acquires.labels("acquired").inc()
        except LeaseHeld as held:
            if await self.store.replica_alive(held.replica_id, held.incarnation):
                self.metrics.acquires.labels("held").inc()
                await self.streams.send_mail(held.replica_id, "wake", ref)
                return
            try:
                lease = await self.store.takeover(
                    sk,
                    (held.replica_id, held.incarnation, held.token),
                    self.replica_id,
                    incarnation,
                    s.lease_ttl_ms,
                )
            except LeaseHeld as won:
                # someone else took it first: make sure the winner looks at the inbox
                if await self.store.replica_alive(won.replica_id, won.incarnation):
                    await self.streams.send_mail(won.replica_id, "wake", ref)
                return
            self.metrics.takeovers.inc()
            self.metrics.acquires.labels("takeover").inc()
            log.info(
                "took over %s from %s/%s (token %d -> %d)",
                ref, held.replica_id, held.incarnation, held.token, lease.token,
            )  # fmt: skip
        if incarnation != self.incarnation or self.fenced:
            # fenced or re-registered while acquiring: that lease names a dead incarnation
            await self.streams.publish_work(ref, "owner_death")
            return
        self._start_actor(lease)

    def _start_actor(self, lease: Lease) -> None:
        actor = SessionActor(self, lease)
        self.actors[actor.ref] = actor
        self.metrics.sessions.set(len(self.actors))
        actor.start()
        if self.draining:
            actor.drain()  # acquired while the drain began: release it (and re-queue) at once

    def forget_actor(self, actor: SessionActor) -> None:
        if self.actors.get(actor.ref) is actor:
            del self.actors[actor.ref]
            self.metrics.sessions.set(len(self.actors))

    def make_shipper(self, actor: SessionActor, next_seq: int) -> Shipper:
        s = self.settings

        def on_stop(exc: ShipStopped) -> None:
            # stale token or fenced: stop the session's run at once; a rejected batch is
            # surfaced to the actor on its next write instead
            if not isinstance(exc, ShipRejected):
                actor.drop(str(exc))

        shipper = Shipper(
            http=self.http,
            url=s.ingest_url,
            admin_token=s.admin_token,
            session=actor.session,
            token=actor.token,
            next_seq=next_seq,
            can_write=self.can_write,
            on_stop=on_stop,
            on_retry=self.metrics.ship_retries.inc,
            linger_s=s.ship_linger_ms / 1000,
            batch_max=s.ship_batch_max,
            batch_max_bytes=s.ship_batch_max_bytes,
            buffer_max=s.ship_buffer_max,
            entry_max_bytes=s.ship_entry_max_bytes,
            timeout_s=s.ship_timeout_s,
            replica_id=self.replica_id,
            incarnation=actor.incarnation,
        )
        shipper.start()
        return shipper
