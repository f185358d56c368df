"""Events (resume / tail), transcript paging, detach, and disconnect-and-resume on a real port."""

from __future__ import annotations

import httpx
import pytest

from streamward.api.schemas import LogEntryOut
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.api.helpers import RunnerSide, assert_problem, ndjson, wait_for


async def _session_with_runs(client: httpx.AsyncClient, runner: RunnerSide) -> list[str]:
    """Two finished runs in s1's log: seq 1..3 (run A), 4..7 (run B)."""
    runs = []
    for n in range(2):
        r = await client.post("/v1/sessions/s1/invoke", json={"mode": "detached", "input": n})
        runs.append(r.json()["run_id"])
    if "default/s1" not in runner.tokens:
        await runner.claim("s1")
    await runner.start("s1", runs[0])
    await runner.finish("s1", runs[0], "a")
    await runner.start("s1", runs[1])
    await runner.finish("s1", runs[1], "b1", "b2")
    return runs


@pytest.fixture
async def two_runs(no_start_wait: None, client: httpx.AsyncClient, runner: RunnerSide) -> list[str]:
    return await _session_with_runs(client, runner)


async def test_events_without_follow_returns_the_log(
    client: httpx.AsyncClient, two_runs: list[str]
) -> None:
    r = await client.get("/v1/sessions/s1/events", params={"follow": "false"})
    assert r.status_code == 200
    assert [e.seq for e in ndjson(r.text)] == [1, 2, 3, 4, 5, 6, 7]
    r = await client.get("/v1/sessions/s1/events", params={"follow": "false", "after": "3-0"})
    assert [e.seq for e in ndjson(r.text)] == [4, 5, 6, 7]
    r = await client.get("/v1/sessions/s1/events", params={"follow": "false", "after": "5"})
    assert [e.seq for e in ndjson(r.text)] == [6, 7]


async def test_events_run_filter_ends_at_the_runs_terminal(
    client: httpx.AsyncClient, two_runs: list[str]
) -> None:
    r = await client.get("/v1/sessions/s1/events", params={"run_id": two_runs[0]})
    entries = ndjson(r.text)
    assert [e.type for e in entries] == ["run.started", "run.output", "run.completed"]
    # resuming after the terminal entry of a finished run ends at once instead of hanging
    r = await client.get(
        "/v1/sessions/s1/events", params={"run_id": two_runs[0], "after": entries[-1].id}
    )
    assert r.status_code == 200 and r.text == ""


async def test_events_sse_honours_last_event_id(
    client: httpx.AsyncClient, two_runs: list[str]
) -> None:
    r = await client.get(
        "/v1/sessions/s1/events",
        params={"run_id": two_runs[1]},
        headers={"Accept": "text/event-stream", "Last-Event-ID": "5-0"},
    )
    ids = [ln[4:] for ln in r.text.splitlines() if ln.startswith("id: ")]
    assert ids == ["6-0", "7-0"]


async def test_transcript_pages(client: httpx.AsyncClient, two_runs: list[str]) -> None:
    seen: list[LogEntryOut] = []
    after = None
    for _ in range(10):
        params = {"limit": "3"} | ({"after": after} if after else {})
        page = (await client.get("/v1/sessions/s1/transcript", params=params)).json()
        seen += [LogEntryOut.model_validate(x) for x in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert [e.seq for e in seen] == [1, 2, 3, 4, 5, 6, 7]
    assert seen[1].data == "a" and seen[1].token >= 1


@pytest.mark.parametrize("path", ["events", "transcript"])
async def test_bad_after_is_422(client: httpx.AsyncClient, two_runs: list[str], path: str) -> None:
    r = await client.get(f"/v1/sessions/s1/{path}", params={"after": "abc", "follow": "false"})
    assert_problem(r, 422, "validation_error")
    r = await client.get(
        "/v1/sessions/s1/events",
        params={"follow": "false"},
        headers={"Last-Event-ID": "nope"},
    )
    assert_problem(r, 422, "invalid_log_id")


@pytest.mark.parametrize("path", ["events?follow=false", "transcript", "liveness", ""])
async def test_unknown_session_is_404(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(f"/v1/sessions/nope/{path}".rstrip("/"))
    assert_problem(r, 404, "session_not_found")


async def test_disconnect_then_resume_loses_and_repeats_nothing(
    live_url: str, store: LeaseStore, streams: Streams
) -> None:
    sk = streams.keys.session("default", "s1")
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as http:
        runner = RunnerSide(http, store, streams, "replica-a")
        await runner.register()
        got: list[LogEntryOut] = []
        async with http.stream("POST", "/v1/sessions/s1/invoke", json={"input": 1}) as resp:
            assert resp.status_code == 200
            run_id = resp.headers["x-streamward-run-id"]
            conn = resp.headers["x-streamward-connection"]
            await runner.claim("s1")
            await runner.start("s1", run_id)
            await runner.ingest("s1", run_id, ("run.output", 0), ("run.output", 1))
            lines = resp.aiter_lines()
            while len(got) < 3:
                line = await anext(lines)
                got += [LogEntryOut.model_validate_json(line)] if line else []
            # leave mid-run: close the socket without reading on
        # the API notices the disconnect (no write needed) and drops the registration...
        await wait_for(lambda: _not_attached(streams, sk, conn), "the attachment to go")
        # ...but the run goes on
        await runner.ingest("s1", run_id, ("run.output", 2), ("run.output", 3))
        await runner.finish("s1", run_id, 4)
        r = await http.get("/v1/sessions/s1/events", params={"after": got[-1].id, "run_id": run_id})
        rest = ndjson(r.text)
    seqs = [e.seq for e in got + rest]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # contiguous: nothing lost or repeated
    assert [e.data for e in got + rest if e.type == "run.output"] == [0, 1, 2, 3, 4]
    assert rest[-1].type == "run.completed"


async def _not_attached(streams: Streams, sk: object, conn: str) -> bool:
    return not await streams.is_attached(sk, conn)  # type: ignore[arg-type]


async def test_detach_one_connection_ends_only_that_stream(
    live_url: str, store: LeaseStore, streams: Streams
) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as http:
        runner = RunnerSide(http, store, streams, "replica-a")
        await runner.register()
        r = await http.post("/v1/sessions/s1/invoke", json={"mode": "detached", "input": 0})
        assert r.status_code == 202
        async with (
            http.stream("GET", "/v1/sessions/s1/events") as a,
            http.stream("GET", "/v1/sessions/s1/events") as b,
        ):
            conn_a = a.headers["x-streamward-connection"]
            live = (await http.get("/v1/sessions/s1/liveness")).json()
            assert live["attached"] == 2
            d = await http.post("/v1/sessions/s1/detach", json={"connection_id": conn_a})
            assert d.json() == {"session_id": "s1", "detached": 1}
            # a ends cleanly (no entries, no error) ...
            assert await a.aread() == b""
            # ... while b still follows and sees a new entry
            await runner.claim("s1")
            await runner.start("s1", r.json()["run_id"])
            b_lines = b.aiter_lines()
            line = await anext(b_lines)
            assert LogEntryOut.model_validate_json(line).type == "run.started"
            d = await http.post("/v1/sessions/s1/detach")  # no body: everyone
            assert d.json()["detached"] == 1
            assert [x async for x in b_lines] == []
        live = (await http.get("/v1/sessions/s1/liveness")).json()
        assert live["attached"] == 0
        assert live["active_run_id"] == r.json()["run_id"]  # the run goes on


async def test_detach_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/sessions/x/detach"), 404, "session_not_found")


async def test_stream_follows_whole_session_without_run_filter(
    live_url: str, store: LeaseStore, streams: Streams
) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as http:
        runner = RunnerSide(http, store, streams, "replica-a")
        await runner.register()
        r1 = (await http.post("/v1/sessions/s1/invoke", json={"mode": "detached"})).json()
        await runner.claim("s1")
        async with http.stream("GET", "/v1/sessions/s1/events", params={"after": "0"}) as s:
            await runner.start("s1", r1["run_id"])
            await runner.finish("s1", r1["run_id"])
            lines = s.aiter_lines()
            types = [LogEntryOut.model_validate_json(await anext(lines)).type for _ in range(2)]
            assert types == ["run.started", "run.completed"]
            # no run filter: it keeps following after a terminal entry
            await http.post("/v1/sessions/s1/detach")
            assert [x async for x in lines] == []
