"""SessionHarness (streamward.testing) on fakeredis: every lifecycle step a host author tests
goes through the runner's real code and the project's real Lua, and can fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamward.runner import RunContext, Session, SessionContext, SessionLost, StateTooLarge
from streamward.testing import SessionHarness

Events = list[tuple[Any, ...]]


class Recorder(Session):
    """Records its hooks on the class-level list the test hands in (``events``)."""

    events: Events
    gate: asyncio.Event | None = None

    async def activate(self, ctx: SessionContext) -> None:
        self.events.append(("activate", ctx.reason, ctx.state))
        if (ctx.state or {}).get("fail_activate"):
            raise RuntimeError("sandbox image missing")
        self.turns: list[Any] = list((ctx.state or {}).get("turns", []))

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        self.events.append(("run", input))
        if input.get("wait") and self.gate is not None:
            await self.gate.wait()
        if input.get("boom"):
            raise ValueError("bad input")
        self.turns.append(input.get("text"))
        async for extra in ctx.pending_inputs():
            self.turns.append(extra.get("text"))
        if input.get("big"):
            try:
                await ctx.save_state({"x": "y" * 4096})
            except StateTooLarge as exc:
                yield {"too_large": str(exc)}
        await ctx.save_state({"turns": self.turns})
        yield {"turns": list(self.turns)}

    async def passivate(self, ctx: SessionContext, reason: str) -> None:
        self.events.append(("passivate", reason, ctx.can_write))


def recorder(**attrs: Any) -> tuple[type[Session], Events]:
    events: Events = []
    host = type("Rec", (Recorder,), {"events": events, **attrs})
    return host, events


def kinds(events: Events, kind: str) -> list[tuple[Any, ...]]:
    return [e for e in events if e[0] == kind]


async def test_runs_state_and_idle_passivation_then_rehydrate() -> None:
    host, events = recorder()
    async with SessionHarness(host, state_max_bytes=1024) as h:
        first = await h.invoke({"text": "a"})
        second = await h.invoke({"text": "b", "big": True})
        assert first.status == "completed" and first.outputs == [{"turns": ["a"]}]
        assert "limit is 1024" in second.outputs[0]["too_large"]
        assert second.outputs[-1] == {"turns": ["a", "b"]}
        assert await h.saved_state() == {"turns": ["a", "b"]}
        await h.passivate()
        assert h.instance.actor is None  # released
        third = await h.invoke({"text": "c"})
        assert third.outputs == [{"turns": ["a", "b", "c"]}]
        assert len(h.hosts) == 2
    assert [e[:2] for e in kinds(events, "activate")] == [
        ("activate", "new"),
        ("activate", "rehydrate"),
    ]
    assert kinds(events, "activate")[1][2] == {"turns": ["a", "b"]}
    # one passivate per activate: idle, then the harness' close drains
    assert kinds(events, "passivate") == [("passivate", "idle", True), ("passivate", "drain", True)]
    assert events[0][0] == "activate" and events[1][0] == "run"


async def test_a_failing_run_ends_failed_and_the_host_lives_on() -> None:
    host, _ = recorder()
    async with SessionHarness(host) as h:
        bad = await h.invoke({"boom": True})
        good = await h.invoke({"text": "x"})
    assert bad.status == "failed" and bad.error == "bad input"
    assert good.outputs == [{"turns": ["x"]}]


async def test_pending_inputs_are_merged_into_the_running_run() -> None:
    gate = asyncio.Event()
    host, _ = recorder(gate=gate)
    async with SessionHarness(host) as h:
        first = await h.submit({"text": "a", "wait": True})
        await h.wait_for(lambda: h.hosts, 5, "activation")
        later = [await h.submit({"text": t}) for t in ("b", "c")]
        gate.set()
        done = await h.result(first)
        merged = [await h.result(r) for r in later]
    assert done.outputs == [{"turns": ["a", "b", "c"]}]
    assert [m.status for m in merged] == ["merged", "merged"]
    assert all(m.terminal.data["into_run_id"] == first for m in merged)


async def test_takeover_activates_a_new_instance_with_the_last_state_and_fences_the_old() -> None:
    host, events = recorder()
    async with SessionHarness(host) as h:
        await h.invoke({"text": "a"})
        old_ctx = h.instance.context
        assert old_ctx is not None
        await h.takeover()
        after = await h.invoke({"text": "b"})
        assert after.outputs == [{"turns": ["a", "b"]}]
        assert after.entries[0].data["replica_id"] == "harness-2"
        # the old activation is still in memory (a paused owner): its writes are refused
        with pytest.raises(SessionLost):
            await old_ctx.save_state({"turns": ["stale"]})
        assert await h.saved_state() == {"turns": ["a", "b"]}
        await h.previous.notice_loss()
    assert kinds(events, "activate")[1] == ("activate", "takeover", {"turns": ["a"]})
    assert ("passivate", "lost", False) in events


@pytest.mark.parametrize(
    ("end", "reason", "can_write"),
    # deleted keeps can_write True as the runner does today (its writes are refused in Redis
    # all the same: the deletion bumped the epoch); lost is the one end that says False
    [("drain", "drain", True), ("delete", "deleted", True), ("lose", "lost", False)],
)
async def test_every_end_passivates_once(end: str, reason: str, can_write: bool) -> None:
    host, events = recorder()
    async with SessionHarness(host) as h:
        await h.invoke({"text": "a"})
        await getattr(h, end)()
        assert h.instance.actor is None
    assert kinds(events, "passivate") == [("passivate", reason, can_write)]


async def test_function_handlers_run_as_stateless_hosts() -> None:
    from streamward.runner.handlers import echo

    async with SessionHarness(echo) as h:
        res = await h.invoke({"text": "hi", "chunks": 2})
        assert await h.saved_state() is None
    assert res.outputs == [{"text": "hi", "i": 0}, {"text": "hi", "i": 1}]


async def test_a_failing_activate_is_recorded_retried_and_ends_the_inputs() -> None:
    host, events = recorder()
    async with SessionHarness(host, activation_max_failures=2) as h:
        # a state that makes activate raise (the recorder's switch)
        await h.client.hset(h.session.state, mapping={"data": '{"fail_activate": true}',
                            "token": "0", "replica_id": "x", "saved_ms": "0"})  # fmt: skip
        run_id = await h.submit({"text": "a"})
        await h.wait_for(lambda: h.instance.actor is None, 10, "release after the failure")
        await h.claim()  # the re-queued work, claimed again: the second failure
        res = await h.result(run_id)
        failed = [e for e in await h.transcript() if e.type == "session.activation_failed"]
    assert res.status == "failed" and res.terminal.data["error_type"] == "activation_failed"
    assert [e.data["failures"] for e in failed] == [1, 2]
    assert failed[0].data["error"] == "sandbox image missing"
    assert kinds(events, "passivate") == []  # never for an activate that raised
    assert kinds(events, "run") == []


async def test_closing_with_a_run_still_going_cuts_it_after_the_drain_timeout() -> None:
    gate = asyncio.Event()  # never set: the run would wait forever
    host, events = recorder(gate=gate)
    async with SessionHarness(host, drain_timeout_s=0.2) as h:
        run_id = await h.submit({"text": "a", "wait": True})
        await h.wait_for(lambda: kinds(events, "run"), 5, "the run to start")
    rs = await h.streams.run_state(h.session, run_id)
    assert rs is not None and rs.status == "interrupted"  # re-run by the next owner
    assert kinds(events, "passivate") == [("passivate", "drain", True)]
