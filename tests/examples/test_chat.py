"""The chat example: the conversation survives passivation, a takeover and a kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streamward.runner import RunContext
from streamward.runner.examples.chat import Chat
from streamward.testing import SessionHarness
from streamward.tools.fleet import Fleet
from tests.runner.helpers import invoke, owner, run_done, transcript, wait_until


async def test_turns_accumulate_and_survive_idle_passivation() -> None:
    async with SessionHarness(Chat) as h:
        a = await h.invoke({"text": "hello"})
        b = await h.invoke({"text": "how are you"})
        await h.passivate()
        c = await h.invoke({"text": "still there?"})
        assert h.host is not h.hosts[0]  # a new instance, rebuilt from the snapshot
    assert a.outputs == [
        {
            "reply": "message 1: 'hello'",
            "turn": 1,
            "previous": None,
            "turns": ["hello"],
            "activation": "new",
        }
    ]
    assert b.outputs[0]["turn"] == 2 and b.outputs[0]["previous"] == "hello"
    assert c.outputs[0]["turns"] == ["hello", "how are you", "still there?"]
    assert c.outputs[0]["activation"] == "rehydrate"


async def test_takeover_answers_with_the_whole_conversation() -> None:
    async with SessionHarness(Chat) as h:
        await h.invoke({"text": "one"})
        await h.invoke({"text": "two"})
        await h.takeover()
        three = await h.invoke({"text": "three"})
        assert getattr(h.host, "activated_as", None) == "takeover"
    assert three.outputs[0]["turns"] == ["one", "two", "three"]
    assert three.outputs[0]["previous"] == "two"


class SlowChat(Chat):
    """Chat whose turn waits for the test's gate when asked: follow-ups queue behind it."""

    gate: asyncio.Event

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        if input.get("wait"):
            await self.gate.wait()
        async for out in super().run(ctx, input):
            yield out


async def test_follow_ups_queued_during_a_turn_are_folded_into_it() -> None:
    class Gated(SlowChat):
        gate = asyncio.Event()

    async with SessionHarness(Gated) as h:
        first = await h.submit({"text": "a", "wait": True})
        follow = [await h.submit({"text": t}) for t in ("b", "c")]
        Gated.gate.set()
        done = await h.result(first)
        ends = [await h.result(r) for r in follow]
    assert done.outputs[0]["turns"] == ["a", "b", "c"]
    assert [e.status for e in ends] == ["merged", "merged"]
    assert {e.terminal.data["into_run_id"] for e in ends} == {first}


async def test_bad_input_fails_the_run_not_the_session() -> None:
    async with SessionHarness(Chat) as h:
        bad = await h.invoke({"nope": 1})
        ok = await h.invoke({"text": "fine"})
    assert bad.status == "failed" and "chat input" in (bad.error or "")
    assert ok.outputs[0]["turns"] == ["fine"]


def _reply(rc: Any, session_id: str, run_id: str) -> Any:
    wait_until(run_done(rc, session_id, run_id), 30, f"run {run_id}")
    entries = transcript(rc, session_id)
    (out,) = [e.data for e in entries if e.run_id == run_id and e.type == "run.output"]
    return out


def test_kill_9_of_the_owner_keeps_the_conversation(api_fleet: Fleet, rc: Any) -> None:
    host = ["--handler", "streamward.runner.examples.chat:Chat"]
    r1 = api_fleet.start_runner("c1", args=host)
    for text in ("hi", "my name is Ada"):
        run = invoke(api_fleet.api_url, "thread-1", {"text": text})
        _reply(rc, "thread-1", run["run_id"])
    assert owner(rc, "thread-1") is not None
    api_fleet.start_runner("c2", args=host)
    r1.kill()  # SIGKILL: no passivate, no release
    run = invoke(api_fleet.api_url, "thread-1", {"text": "what is my name?"})
    out = _reply(rc, "thread-1", run["run_id"])
    assert out["turns"] == ["hi", "my name is Ada", "what is my name?"]
    assert out["previous"] == "my name is Ada" and out["activation"] == "takeover"
    own = owner(rc, "thread-1")
    assert own is not None and own[0] == "c2"
