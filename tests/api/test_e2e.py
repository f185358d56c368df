"""End to end with real processes: ``streamward api`` instances and ``streamward runner``s."""

from __future__ import annotations

import asyncio

import pytest

from streamward.client import AsyncStreamwardClient, StreamState, StreamwardClient
from streamward.tools.fleet import Fleet
from tests.api.test_client import CutFirstStream

WAIT_S = 30.0


def _echo(chunks: int, delay_ms: int = 0, text: str = "hi") -> dict[str, object]:
    return {"text": text, "chunks": chunks, "delay_ms": delay_ms}


def test_detached_then_attached_with_a_real_runner(fleet: Fleet) -> None:
    api = fleet.start_api()
    fleet.start_runner("runner-a")
    with StreamwardClient(api.url, admin_token=fleet.admin_token) as client:
        accepted = client.invoke("s1", _echo(2))
        assert accepted.status == "running"
        assert accepted.owner is not None and accepted.owner.replica_id == "runner-a"
        lock = client.locks().items[0]
        assert (lock.holder, lock.token, lock.state) == ("runner-a", accepted.owner.token, "held")

        entries = client.invoke("s1", _echo(3, text="yo"), detached=False)
        assert [e.type for e in entries] == [
            "run.started",
            "run.output",
            "run.output",
            "run.output",
            "run.completed",
        ]
        assert [e.data for e in entries[1:4]] == [{"text": "yo", "i": i} for i in range(3)]
        assert entries[0].data["replica_id"] == "runner-a"
        # the detached run finished too, earlier in the same log
        log = client.transcript("s1").items
        assert log[0].run_id == accepted.run_id
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        live = client.liveness("s1")
        assert live.alive and live.owner is not None and live.owner.replica_id == "runner-a"


async def test_two_api_instances_and_resume_with_real_runners(fleet: Fleet) -> None:
    api_a = fleet.start_api()
    api_b = fleet.start_api()
    fleet.start_runner("runner-a", api_url=api_a.url)  # ships through A
    fleet.start_runner("runner-b", api_url=api_b.url)  # ships through B
    cut = CutFirstStream("/invoke", after_lines=4)
    async with (
        AsyncStreamwardClient(api_b.url, transport=cut, resume_delay_s=0) as b,
        AsyncStreamwardClient(api_a.url) as a,
    ):
        state = StreamState("s1")
        entries = [e async for e in b.stream("s1", input=_echo(30, delay_ms=5), state=state)]
        assert cut.cut == 1 and state.resumes == 1
        outputs = [e.data["i"] for e in entries if e.type == "run.output"]
        assert outputs == list(range(30))  # nothing lost or repeated across the cut
        assert entries[-1].type == "run.completed"
        # the other instance sees the same run and the same transcript
        again = [e async for e in a.stream("s1", run_id=state.run_id, after="0")]
        assert [e.id for e in again] == [e.id for e in entries]
        # many sessions spread over both runners, invoked through both instances
        results = await asyncio.gather(
            *[(a if i % 2 else b).invoke(f"many-{i}", _echo(1)) for i in range(20)]
        )
        assert {r.status for r in results} == {"running"}
        owners = {r.owner.replica_id for r in results if r.owner is not None}
        assert owners <= {"runner-a", "runner-b"}


async def test_cancel_a_running_run(fleet: Fleet) -> None:
    api = fleet.start_api()
    fleet.start_runner("runner-a")
    async with AsyncStreamwardClient(api.url) as client:
        accepted = await client.invoke("s1", _echo(10_000, delay_ms=10))
        assert accepted.status == "running"
        res = await client.cancel("s1")
        assert res.run_id == accepted.run_id
        entries = [e async for e in client.stream("s1", run_id=accepted.run_id)]
        assert entries[-1].type == "run.cancelled"
        assert sum(e.type == "run.output" for e in entries) < 10_000


async def test_delete_fences_the_runner_and_drain_stops_it(fleet: Fleet) -> None:
    api = fleet.start_api()
    runner = fleet.start_runner("runner-a")
    async with AsyncStreamwardClient(api.url, admin_token=fleet.admin_token) as client:
        accepted = await client.invoke("s1", _echo(10_000, delay_ms=10))
        assert accepted.status == "running" and accepted.owner is not None
        deleted = await client.delete_session("s1")
        assert deleted.status == "deleted" and deleted.owner is None
        lock = await client.lock("s1")
        assert lock.state == "free" and lock.epoch == accepted.owner.token + 1
        # a later invoke of the same id starts over under a newer token
        again = await client.invoke("s1", _echo(1))
        assert again.status == "running" and again.owner is not None, runner.log()[-3000:]
        assert again.owner.token > accepted.owner.token

        assert (await client.drain_replica("runner-a")).status == "draining"
        # the runner drains and exits 0 on its own
        code = await asyncio.to_thread(runner.popen.wait, WAIT_S)
        assert code == 0, runner.log()[-2000:]


@pytest.mark.parametrize("sse", [False, True])
def test_attached_stream_formats_over_http(fleet: Fleet, sse: bool) -> None:
    import httpx

    api = fleet.start_api()
    fleet.start_runner("runner-a")
    accept = "text/event-stream" if sse else "application/x-ndjson"
    with httpx.stream(
        "POST",
        f"{api.url}/v1/sessions/s1/invoke",
        json={"input": _echo(2)},
        headers={"Accept": accept},
        timeout=WAIT_S,
    ) as r:
        body = r.read().decode()
    assert r.headers["content-type"].startswith(accept)
    if sse:
        assert body.count("id: ") == 4 and body.count("data: ") == 4
    else:
        assert len(body.splitlines()) == 4
