"""Session hosts in process against real Redis and the real API: the lifecycle guarantees.

activate before any run, passivate once per activate (idle, drain, deleted, lost with
can_write False), the activation reasons, fenced state, pending inputs ending run.merged,
failed activations retried with backoff and ended, and hooks that never stall the replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner import RunContext, Session, SessionContext, SessionLost, StateTooLarge
from streamward.runner.replica import Replica
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer
from tests.runner.test_replica import _submit, settings_for, wait_for

Events = list[tuple[Any, ...]]


def recording_host(events: Events, **behaviour: Any) -> type[Session]:
    """A host that records every hook call into ``events`` (one list per test)."""

    class Recorder(Session):
        async def activate(self, ctx: SessionContext) -> None:
            events.append(("activate", ctx.reason, ctx.state, ctx.session_id))
            if behaviour.get("activate_fails"):
                raise RuntimeError("sandbox image missing")
            if behaviour.get("activate_blocks"):
                await asyncio.sleep(3600)
            self.turns: list[Any] = list((ctx.state or {}).get("turns", []))

        async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
            events.append(("run", ctx.run_id))
            if input.get("wait"):
                gate: asyncio.Event = behaviour["gate"]
                await gate.wait()
            self.turns.append(input.get("text"))
            async for extra in ctx.pending_inputs():
                self.turns.append(extra.get("text"))
            if input.get("big"):
                try:
                    await ctx.save_state({"x": "y" * 2_000})
                except StateTooLarge as exc:
                    events.append(("too_large", str(exc)))
            await ctx.save_state({"turns": self.turns})
            yield {"turns": list(self.turns)}

        async def passivate(self, ctx: SessionContext, reason: str) -> None:
            events.append(("passivate", reason, ctx.can_write))
            if not ctx.can_write:
                try:
                    await ctx.save_state({"turns": ["after loss"]})
                except SessionLost:
                    events.append(("save_refused",))
            if behaviour.get("passivate_blocks"):
                await asyncio.sleep(3600)

    return Recorder


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        await r.stop()


async def _start(replicas: list[Replica], settings: Any, host: type[Session]) -> Replica:
    replica = Replica(settings, host)
    replicas.append(replica)
    await replica.start()
    return replica


def _done(streams: Streams, sk: SessionKeys, run_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rs = await streams.run_state(sk, run_id)
        return rs is not None and rs.status in ("completed", "failed", "cancelled", "merged")

    return check


def _kinds(events: Events, kind: str) -> list[tuple[Any, ...]]:
    return [e for e in events if e[0] == kind]


async def test_activate_before_runs_then_idle_passivates_once_and_rehydrates(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    s = settings_for(
        redis_server.url, api.url, fleet, tmp_path, close_delay_s=0.3, state_max_bytes=1024
    )
    await _start(replicas, s, recording_host(events))
    streams, sk = Streams(redis_client), keys.session("default", "chat")
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, sk, "run_1"), 10, "the first run")
    await _submit(store, streams, sk, "run_2", '{"text": "b", "big": true}')
    await wait_for(_done(streams, sk, "run_2"), 10, "the second run")
    await wait_for(lambda: bool(_kinds(events, "passivate")), 10, "idle passivation")
    await wait_for(lambda: not replicas[0].actors, 10, "release")
    assert events[0] == ("activate", "new", None, "chat")
    assert [e[0] for e in events[:3]] == ["activate", "run", "run"]
    assert _kinds(events, "passivate") == [("passivate", "idle", True)]
    # over STREAMWARD_STATE_MAX_BYTES: a clear error before any Redis call
    assert "limit is 1024" in _kinds(events, "too_large")[0][1]
    saved = await streams.read_state(sk)
    assert saved is not None and saved.value() == {"turns": ["a", "b"]}
    # the next ownership: rehydrate, with the state the last activation saved
    await _submit(store, streams, sk, "run_3", '{"text": "c"}')
    await wait_for(_done(streams, sk, "run_3"), 10, "third run")
    assert _kinds(events, "activate")[1] == ("activate", "rehydrate", {"turns": ["a", "b"]}, "chat")
    # the state endpoint serves it (same permission as the transcript)
    async with httpx.AsyncClient(base_url=api.url) as http:
        resp = await http.get("/v1/sessions/chat/state")
        missing = await http.get("/v1/sessions/nobody/state")
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == {"turns": ["a", "b", "c"]}
    assert missing.status_code == 404 and missing.json()["code"] == "state_not_found"


async def test_drain_passivates_then_the_next_owner_sees_a_handoff(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    host = recording_host(events)
    s1 = settings_for(redis_server.url, api.url, fleet, tmp_path, replica_id="one")
    r1 = await _start(replicas, s1, host)
    streams, sk = Streams(redis_client), keys.session("default", "moving")
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, sk, "run_1"), 10, "the first run")
    await r1.stop()
    assert _kinds(events, "passivate") == [("passivate", "drain", True)]
    s2 = settings_for(redis_server.url, api.url, fleet, tmp_path, replica_id="two")
    await _start(replicas, s2, host)
    await _submit(store, streams, sk, "run_2", '{"text": "b"}')
    await wait_for(_done(streams, sk, "run_2"), 10, "the second run")
    assert _kinds(events, "activate")[1] == ("activate", "handoff", {"turns": ["a"]}, "moving")


async def test_lost_lease_passivates_with_can_write_false_and_refuses_writes(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    gate = asyncio.Event()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path)
    await _start(replicas, s, recording_host(events, gate=gate))
    streams, sk = Streams(redis_client), keys.session("default", "fenced")
    await _submit(store, streams, sk, "run_1", '{"text": "a", "wait": true}')
    await wait_for(lambda: bool(_kinds(events, "run")), 10, "the run to start")
    await store.force_release(sk, "test")  # another owner could take it now
    gate.set()  # the run's save_state / output is refused: the session is lost
    await wait_for(lambda: bool(_kinds(events, "passivate")), 10, "passivate(lost)")
    assert _kinds(events, "passivate") == [("passivate", "lost", False)]
    assert _kinds(events, "save_refused") == [("save_refused",)]
    saved = await streams.read_state(sk)
    assert saved is None  # neither the run's nor the hook's write landed


async def test_deleted_session_passivates_deleted(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, close_delay_s=0.5)
    await _start(replicas, s, recording_host(events))
    streams, sk = Streams(redis_client), keys.session("default", "doomed")
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, sk, "run_1"), 10, "the run")
    async with httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.delete("/v1/sessions/doomed")).status_code == 200
    await wait_for(lambda: bool(_kinds(events, "passivate")), 10, "passivation")
    assert [e[:2] for e in _kinds(events, "passivate")] == [("passivate", "deleted")]


async def test_an_idle_session_evicted_at_max_sessions_passivates_idle(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, max_sessions=1, close_delay_s=60)
    await _start(replicas, s, recording_host(events))
    streams = Streams(redis_client)
    first, second = keys.session("default", "first"), keys.session("default", "second")
    await _submit(store, streams, first, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, first, "run_1"), 10, "the first session's run")
    await _submit(store, streams, second, "run_2", '{"text": "b"}')  # no room: evict "first"
    await wait_for(_done(streams, second, "run_2"), 20, "the second session's run")
    assert _kinds(events, "passivate") == [("passivate", "idle", True)]
    assert [e[3] for e in _kinds(events, "activate")] == ["first", "second"]


async def test_a_session_reset_by_its_route_passivates_reset(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    s = settings_for(redis_server.url, api.url, fleet, tmp_path, close_delay_s=0.5)
    await _start(replicas, s, recording_host(events))
    streams, sk = Streams(redis_client), keys.session("default", "gen-1")
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, sk, "run_1"), 10, "the run")
    # what a route's reset does to the previous generation (api/routes/events.py)
    await streams.retire_session(sk, "expired", "daily_reset", 60_000)
    await wait_for(lambda: bool(_kinds(events, "passivate")), 10, "passivation")
    assert [e[:2] for e in _kinds(events, "passivate")] == [("passivate", "reset")]


async def test_pending_inputs_end_run_merged_into_the_running_run(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    gate = asyncio.Event()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path)
    await _start(replicas, s, recording_host(events, gate=gate))
    streams, sk = Streams(redis_client), keys.session("default", "merge")
    await _submit(store, streams, sk, "run_1", '{"text": "a", "wait": true}')
    await wait_for(lambda: bool(_kinds(events, "run")), 10, "the run to start")
    await _submit(store, streams, sk, "run_2", '{"text": "b"}')
    await _submit(store, streams, sk, "run_3", '{"text": "c"}')
    gate.set()
    await wait_for(_done(streams, sk, "run_1"), 10, "the absorbing run")
    for rid in ("run_2", "run_3"):
        rs = await streams.run_state(sk, rid)
        assert rs is not None and rs.status == "merged"
    entries = await streams.read_log(sk, count=100)
    merged = [e for e in entries if e.type == "run.merged"]
    assert [(e.run_id, e.data["into_run_id"]) for e in merged] == [
        ("run_2", "run_1"),
        ("run_3", "run_1"),
    ]
    outputs = [e.data for e in entries if e.type == "run.output"]
    assert outputs == [{"turns": ["a", "b", "c"]}]
    assert _kinds(events, "run") == [("run", "run_1")]  # the merged inputs never ran alone
    # run_1's own entry is completed right after its terminal entry; nothing else is left
    await wait_for(lambda: _inbox_empty(streams, sk), 10, "an empty inbox")


async def _inbox_empty(streams: Streams, sk: SessionKeys) -> bool:
    return await streams.pending(sk) == 0


async def test_failed_activation_is_recorded_backed_off_and_the_invoke_ends(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    s = settings_for(
        redis_server.url, api.url, fleet, tmp_path, activation_max_failures=3, close_delay_s=0.2
    )
    await _start(replicas, s, recording_host(events, activate_fails=True))
    streams, sk = Streams(redis_client), keys.session("default", "broken")
    await _submit(store, streams, sk, "run_1", '{"text": "a"}')
    await wait_for(_done(streams, sk, "run_1"), 30, "the invoke to end")
    entries = await streams.read_log(sk, count=100)
    failures = [e for e in entries if e.type == "session.activation_failed"]
    assert [e.data["failures"] for e in failures] == [1, 2, 3]
    assert failures[0].data["error"] == "sandbox image missing"
    assert failures[0].data["error_type"] == "RuntimeError"
    (end,) = [e for e in entries if e.run_id == "run_1"]
    assert end.type == "run.failed" and end.data["error_type"] == "activation_failed"
    assert not _kinds(events, "run") and not _kinds(events, "passivate")
    # nothing waits any more: no further attempt (never hot-looped)
    await asyncio.sleep(1.0)
    assert len(_kinds(events, "activate")) == 3


async def test_stuck_hooks_never_stall_renewals_or_other_sessions(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    stuck_events: Events = []
    s = settings_for(
        redis_server.url,
        api.url,
        fleet,
        tmp_path,
        lease_ttl_ms=1500,
        lease_renew_interval_ms=300,
        passivate_timeout_s=0.3,
        close_delay_s=0.2,
    )

    class Router(Session):
        """``stuck`` blocks in activate, ``slow`` in passivate; ``free`` is normal."""

        inner: Session

        async def activate(self, ctx: SessionContext) -> None:
            blocks = {"stuck": {"activate_blocks": True}, "slow": {"passivate_blocks": True}}
            self.inner = recording_host(stuck_events, **blocks.get(ctx.session_id, {}))()
            await self.inner.activate(ctx)

        def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
            return self.inner.run(ctx, input)

        async def passivate(self, ctx: SessionContext, reason: str) -> None:
            await self.inner.passivate(ctx, reason)

    replica = await _start(replicas, s, Router)
    streams = Streams(redis_client)
    stuck, slow, free = (keys.session("default", n) for n in ("stuck", "slow", "free"))
    await _submit(store, streams, stuck, "run_s", '{"text": "s"}')
    await _submit(store, streams, slow, "run_w", '{"text": "w"}')
    await wait_for(_done(streams, slow, "run_w"), 10, "the slow session's run")
    # its passivate hangs: cancelled at the deadline, the session still leaves
    await wait_for(lambda: "slow" not in {a.session.session_id for a in replica.actors.values()},
                   10, "the slow session to leave")  # fmt: skip
    await _submit(store, streams, free, "run_f", '{"text": "f"}')
    await wait_for(_done(streams, free, "run_f"), 10, "another session's run")
    # the stuck activation's lease is still renewed (3 TTLs later it is still held)
    first = (await store.ownership(stuck)).token
    await asyncio.sleep(4.5)
    own = await store.ownership(stuck)
    assert own.held and own.token == first and own.replica_id == s.replica_id


async def test_a_streamed_invoke_absorbed_by_a_running_run_ends_with_run_merged(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    api = fleet.start_api()
    events: Events = []
    gate = asyncio.Event()
    s = settings_for(redis_server.url, api.url, fleet, tmp_path)
    await _start(replicas, s, recording_host(events, gate=gate))
    streams, sk = Streams(redis_client), keys.session("default", "streamed")
    await _submit(store, streams, sk, "run_1", '{"text": "a", "wait": true}')
    await wait_for(lambda: bool(_kinds(events, "run")), 10, "the run to start")

    async def follow() -> list[dict[str, Any]]:
        async with (
            httpx.AsyncClient(base_url=api.url, timeout=30) as http,
            http.stream(
                "POST", "/v1/sessions/streamed/invoke", json={"input": {"text": "b"}}
            ) as resp,
        ):
            assert resp.status_code == 200
            return [orjson.loads(line) async for line in resp.aiter_lines() if line]

    streamed = asyncio.create_task(follow())
    await wait_for(lambda: _pending_is(streams, sk, 2), 10, "the second input queued")
    gate.set()
    lines = await asyncio.wait_for(streamed, 30)
    assert [line["type"] for line in lines] == ["run.merged"]
    assert lines[0]["data"]["into_run_id"] == "run_1"
    assert lines[0]["data"]["input"] == {"text": "b"}


async def _pending_is(streams: Streams, sk: SessionKeys, n: int) -> bool:
    return await streams.pending(sk) == n


async def test_a_reset_generation_is_told_why_at_activate(
    replicas: list[Replica],
    fleet: Fleet,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """The reset that opened this generation (written to meta by the routing lifecycle)
    reaches the host's activate; a session never reset gets None."""
    api = fleet.start_api()
    seen: list[tuple[str | None, str | None]] = []

    class Told(Session):
        async def activate(self, ctx: SessionContext) -> None:
            seen.append((ctx.reset_reason, ctx.previous_session_id))

        async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
            yield input

    await _start(replicas, settings_for(redis_server.url, api.url, fleet, tmp_path), Told)
    streams = Streams(redis_client)
    fresh, reset = keys.session("default", "fresh"), keys.session("default", "gh.k.2")
    await streams.set_meta(reset, reset_reason="idle", previous_session_id="gh.k.1")
    await _submit(store, streams, reset, "run_r", '{"text": "a"}')
    await _submit(store, streams, fresh, "run_f", '{"text": "a"}')
    await wait_for(_done(streams, reset, "run_r"), 10, "the reset session's run")
    await wait_for(_done(streams, fresh, "run_f"), 10, "the fresh session's run")
    assert sorted(seen, key=str) == sorted([("idle", "gh.k.1"), (None, None)], key=str)
