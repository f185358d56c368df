"""``SessionHarness``: a session host driven in process on fakeredis, through the runner's
own code.

What runs is the real thing wherever it can be: the runner's ``SessionBook`` claims the
session (acquireLease / takeoverLease), its ``SessionActor`` activates the host, runs the
inbox in order and passivates it, its ``Shipper`` posts the transcript to the real API app
(in process, through httpx's ASGI transport), and every script is the project's Lua, run by
fakeredis' Lua runtime. What the harness stands in for are the replica's loops: it claims
when an input is submitted (instead of work intake and mail), never renews or expires a
lease on its own, and asks for passivation, drain, deletion, a lost lease or a takeover
when the test says so (docs/runner.md, "Testing your host").
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from streamward.api.config import Settings
from streamward.api.deps import AppState
from streamward.api.main import create_app
from streamward.core.contract import RUN_OUTPUT, TERMINAL_STATUSES, TERMINAL_TYPES
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.routes import RouteStore
from streamward.lua.store import LeaseStore
from streamward.lua.streams import LogEntry, Streams
from streamward.runner.actor import SessionActor
from streamward.runner.config import RunnerSettings
from streamward.runner.lifecycle import HandlerSpec, HostFactory, Session, SessionContext
from streamward.runner.metrics import Metrics
from streamward.runner.sessions import SessionBook
from streamward.runner.state import ReplicaState

try:
    import fakeredis
except ImportError as exc:  # a runtime install: the kit is an extra, never a dependency
    raise ImportError(
        "streamward.testing needs fakeredis with Lua: pip install 'streamward[testkit]'"
    ) from exc

API_URL = "http://streamward-harness"
ADMIN_TOKEN = "harness-admin-token"
# long enough never to lapse during a test: the harness decides when a replica "dies"
REPLICA_TTL_MS = 3_600_000
POLL_S = 0.005


@dataclass(frozen=True)
class RunResult:
    """One input's end: its outputs, its terminal entry and every entry of its run."""

    run_id: str
    status: str  # completed | failed | cancelled | merged
    outputs: list[Any]
    terminal: LogEntry
    entries: list[LogEntry]

    @property
    def error(self) -> str | None:
        """``run.failed``'s error message (None for any other end)."""
        data = self.terminal.data
        return str(data.get("error")) if self.status == "failed" and data else None


@dataclass
class Instance:
    """One simulated runner replica: a registered incarnation and its session book."""

    replica_id: str
    book: SessionBook
    session: SessionKeys
    hosts: list[Session] = field(default_factory=list)  # every instance it activated

    @property
    def actor(self) -> SessionActor | None:
        return self.book.actors.get(self.session.ref)

    @property
    def host(self) -> Session | None:
        """The host instance of this replica's current activation, if any."""
        actor = self.actor
        return actor.life.host if actor is not None and actor.life.active else None

    @property
    def context(self) -> SessionContext | None:
        actor = self.actor
        return actor.life.ctx if actor is not None else None

    async def notice_loss(self) -> None:
        """What the replica does when it learns the lease moved (a force-release mail, a
        409 from ingest): the actor is dropped and its host passivates ``lost``."""
        await self.book.drop_if_stale(self.session.ref)

    async def stop(self, graceful: bool) -> None:
        actor = self.actor
        if actor is None:
            return
        if not graceful:
            actor.drop("harness closed")
            await actor.closed.wait()
            return
        actor.drain()
        try:  # as the replica's stop: a run still going after the drain timeout is cut
            await asyncio.wait_for(actor.closed.wait(), self.book.settings.drain_timeout_s)
        except TimeoutError:
            await actor.interrupt()


class SessionHarness:
    """Drive one session of ``host`` (a ``Session`` subclass or a function handler)::

    async with SessionHarness(Chat) as h:
        first = await h.invoke({"text": "hi"})
        assert first.outputs == [...]
        await h.passivate()        # idle: passivate("idle"), then released
        await h.takeover()         # the owner "dies": the next input activates a new
        again = await h.invoke(...)  # instance with reason "takeover" and the last state
    """

    def __init__(
        self,
        host: HandlerSpec,
        *,
        session_id: str = "harness",
        project: str = "default",
        state_max_bytes: int = 1 << 20,
        passivate_timeout_s: float = 10.0,
        activation_max_failures: int = 3,
        run_timeout_s: float = 10.0,
        client: RedisClient | None = None,
        **runner_settings: Any,
    ) -> None:
        self.handler = host
        self.keys = Keys()
        self.session = self.keys.session(project, session_id)
        self.run_timeout_s = run_timeout_s
        self._own_client = client is None
        self.client: RedisClient = client or fakeredis.FakeAsyncRedis(decode_responses=True)
        self.store = LeaseStore(self.client, self.keys)
        self.streams = Streams(self.client, self.keys)
        self._runner_settings: dict[str, Any] = {
            "redis_url": "redis://streamward-harness",
            "api_url": API_URL,
            "admin_token": ADMIN_TOKEN,
            "close_delay_s": 3600.0,  # passivation happens when the test asks for it
            # no renewal loop runs here: a lease must outlive any test (fakeredis expires
            # keys by the wall clock like Redis does)
            "lease_ttl_ms": REPLICA_TTL_MS,
            "drain_timeout_s": 1.0,
            "ship_linger_ms": 0,
            "state_max_bytes": state_max_bytes,
            "passivate_timeout_s": passivate_timeout_s,
            "activation_max_failures": activation_max_failures,
            **runner_settings,
        }
        self.http: httpx.AsyncClient | None = None
        self.instances: list[Instance] = []
        self._ids = itertools.count(1)

    # -- setup ----------------------------------------------------------------------------

    async def __aenter__(self) -> SessionHarness:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """The API app on the fake Redis (no lifespan: the harness hands it the client),
        then the first replica."""
        api_settings = Settings(redis_url="redis://streamward-harness", admin_token=ADMIN_TOKEN)
        app = create_app(api_settings)
        app.state.sw = AppState(
            settings=api_settings,
            client=self.client,
            keys=self.keys,
            store=self.store,
            streams=self.streams,
            routes=RouteStore(self.client, self.keys),
            scripts_loaded=True,
        )
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_URL)
        await self._new_instance()

    async def close(self) -> None:
        """Drain the current replica (its host passivates ``drain``), drop earlier ones
        (``lost``), close the clients. Every host that activated has passivated after this."""
        for inst in reversed(self.instances):
            await inst.stop(graceful=inst is self.instances[-1])
        if self.http is not None:
            await self.http.aclose()
        if self._own_client:
            await self.client.aclose()

    async def _new_instance(self) -> Instance:
        n = len(self.instances) + 1
        replica_id = f"harness-{n}"
        settings = RunnerSettings(replica_id=replica_id, **self._runner_settings)
        state = ReplicaState(replica_id)
        state.incarnation = secrets.token_hex(8)
        await self.store.register_replica(replica_id, state.incarnation, REPLICA_TTL_MS, {})
        state.fenced = False
        state.deadline = float("inf")  # never self-fences: leases are never lost by time
        assert self.http is not None, "start() first"
        book = SessionBook(
            state, settings, self.keys, self.store, self.streams, self.http, Metrics(),
            self.handler,
        )  # fmt: skip
        inst = Instance(replica_id, book, self.session)

        def recording(factory: HostFactory) -> HostFactory:
            def make() -> Session:
                host = factory()
                inst.hosts.append(host)
                return host

            return make

        # record every host instance the book makes, whatever the session's type
        book.factories = {t: recording(f) for t, f in book.factories.items()}
        self.instances.append(inst)
        return inst

    # -- what a test looks at ---------------------------------------------------------------

    @property
    def instance(self) -> Instance:
        """The current replica (the one the next input is claimed by)."""
        return self.instances[-1]

    @property
    def previous(self) -> Instance:
        """The replica before the last ``takeover`` (a paused or killed owner)."""
        if len(self.instances) < 2:
            raise LookupError("no takeover happened yet")
        return self.instances[-2]

    @property
    def hosts(self) -> list[Session]:
        """Every host instance activated so far, oldest first, across replicas."""
        return [h for inst in self.instances for h in inst.hosts]

    @property
    def host(self) -> Session:
        """The most recently activated host instance."""
        if not self.hosts:
            raise LookupError("no host was activated yet: submit an input first")
        return self.hosts[-1]

    async def transcript(self) -> list[LogEntry]:
        return await self.streams.read_log(self.session, count=100_000)

    async def saved_state(self) -> Any:
        """The last ``save_state`` snapshot, or None."""
        saved = await self.streams.read_state(self.session)
        return saved.value() if saved is not None else None

    async def meta(self) -> dict[str, str]:
        return await self.streams.meta(self.session)

    # -- inputs -----------------------------------------------------------------------------

    async def submit(
        self, input: Any, *, multitask: str = "enqueue", idempotency_key: str | None = None
    ) -> str:
        """Queue ``input`` (the invoke's enqueueInput) and have the current replica claim the
        session (or wake its actor); returns the run id without waiting for the run."""
        run_id = f"run_{next(self._ids)}_{secrets.token_hex(3)}"
        queued = await self.store.enqueue(
            self.session,
            run_id,
            orjson.dumps(input).decode(),
            multitask=multitask,
            idempotency_key=idempotency_key,
        )
        await self.instance.book.claim(self.session.ref, "invoke")
        return queued.run_id

    async def claim(self) -> None:
        """The current replica claims the session again: what work intake does with work
        the runner re-queued (after a failed ``activate``, a released session with input
        left). ``submit`` claims by itself."""
        actor = self.instance.actor
        if actor is not None and actor.closing:
            await actor.closed.wait()
        await self.instance.book.claim(self.session.ref, "invoke")

    async def result(self, run_id: str, timeout_s: float | None = None) -> RunResult:
        """Wait for the run's terminal entry (the actor runs in the background)."""
        await self.wait_for(
            lambda: self._ended(run_id), timeout_s or self.run_timeout_s, f"run {run_id}'s end"
        )
        entries = [e for e in await self.transcript() if e.run_id == run_id]
        terminal = next(e for e in entries if e.type in TERMINAL_TYPES)
        return RunResult(
            run_id=run_id,
            status=terminal.type.removeprefix("run."),
            outputs=[e.data for e in entries if e.type == RUN_OUTPUT],
            terminal=terminal,
            entries=entries,
        )

    async def invoke(self, input: Any, **kw: Any) -> RunResult:
        """``submit`` then ``result``."""
        return await self.result(await self.submit(input, **kw))

    async def _ended(self, run_id: str) -> bool:
        rs = await self.streams.run_state(self.session, run_id)
        return rs is not None and rs.status in TERMINAL_STATUSES

    async def wait_for(
        self, pred: Callable[[], Any], timeout_s: float, what: str = "the condition"
    ) -> None:
        """Poll ``pred`` (sync or async) until truthy; AssertionError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = pred()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(POLL_S)

    # -- ends of an ownership ---------------------------------------------------------------

    def _actor(self) -> SessionActor:
        actor = self.instance.actor
        if actor is None:
            raise LookupError("the current replica does not own the session")
        return actor

    async def passivate(self) -> None:
        """``close_delay`` passed with nobody attached: once the actor is idle, it passivates
        ``idle`` and releases (the runner's eviction path)."""
        actor = self._actor()
        await self.wait_for(
            lambda: actor.idle.since is not None or actor.closing, self.run_timeout_s, "idle"
        )
        eviction = actor.idle.evict()
        if eviction is not None:
            await eviction
        await actor.closed.wait()

    async def drain(self) -> None:
        """The replica drains (SIGTERM): the running run finishes, passivate ``drain``."""
        actor = self._actor()
        actor.drain()
        await actor.closed.wait()

    async def delete(self) -> None:
        """``DELETE /v1/sessions/{id}`` through the real API, then the owner's reaction to
        its ``released`` mail: passivate ``deleted``."""
        assert self.http is not None
        resp = await self.http.delete(f"/v1/sessions/{self.session.session_id}")
        if resp.status_code != 200:
            raise AssertionError(f"delete answered {resp.status_code}: {resp.text}")
        await self.instance.notice_loss()

    async def lose(self) -> None:
        """The lease is taken away (an operator's force release; a fence looks the same to
        the host): the owner notices, its host passivates ``lost`` with ``can_write`` False."""
        await self.store.force_release(self.session, "harness: lease lost")
        await self.instance.notice_loss()

    async def takeover(self) -> Instance:
        """The current owner "dies" (its replica lease is gone, as after a kill -9) without
        passivating; a new replica takes the session over when the next input arrives (at
        once if one is waiting). Its host activates with reason ``takeover`` and the last
        saved state; the old one, still in memory as ``previous``, can no longer write."""
        old = self.instance
        await self.streams.delete_replica_lease(old.replica_id, old.book.state.incarnation)
        new = await self._new_instance()
        if await self.client.xlen(self.session.inbox):
            await new.book.claim(self.session.ref, "owner_death")
        return new
