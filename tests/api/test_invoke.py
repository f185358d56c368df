"""POST /v1/sessions/{id}/invoke: detached and stream modes, idempotency, multitask, routing."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from fastapi import FastAPI

from streamward.api.schemas import InvokeAccepted
from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import RunnerSide, assert_problem, ndjson


async def test_detached_answers_running_with_owner_once_run_started(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    task = asyncio.create_task(
        client.post("/v1/sessions/s1/invoke", json={"input": {"q": 1}, "mode": "detached"})
    )
    [item] = await runner.wait_inbox("s1")
    assert item.input == {"q": 1}
    token = await runner.claim("s1")
    assert not task.done()  # nothing answers before run.started is in the log
    await runner.start("s1", item.run_id)
    r = await task
    assert r.status_code == 202, r.text
    body = InvokeAccepted.model_validate(r.json())
    assert body.run_id == item.run_id and body.run_id.startswith("run_")
    assert body.status == "running"
    assert body.owner is not None
    assert (body.owner.replica_id, body.owner.token) == ("replica-a", token)
    assert r.headers["x-streamward-run-id"] == body.run_id


async def test_detached_ignores_other_runs_started(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    r1 = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"mode": "detached"}))
    [first] = await runner.wait_inbox("s1")
    r2 = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"mode": "detached"}))
    items = await runner.wait_inbox("s1", 2)
    await runner.claim("s1")
    await runner.start("s1", first.run_id)
    assert (await r1).json()["run_id"] == first.run_id
    assert not r2.done()
    await runner.finish("s1", first.run_id)
    await runner.start("s1", items[1].run_id)
    body = (await r2).json()
    assert body["run_id"] == items[1].run_id and body["status"] == "running"


async def test_detached_queued_after_start_timeout(
    make_settings: SettingsFactory, redis_client: object, streams: Streams
) -> None:
    async with running_app(make_settings(start_timeout_s=0.2)) as app, asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json={"input": "x", "mode": "detached"})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued" and body["owner"] is None
    # it stays queued and will run: the input is in the inbox and the session is on sw:work
    sk = streams.keys.session("default", "s1")
    [item] = await streams.read_inbox(sk)
    assert item.run_id == body["run_id"]
    assert await streams.client.xlen(streams.keys.work) == 1


async def test_invoke_mails_live_owner_instead_of_work_queue(
    make_settings: SettingsFactory, runner: RunnerSide, streams: Streams
) -> None:
    await runner.claim("s1")
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
    assert r.json()["status"] == "queued"
    mail = await streams.read_mail("replica-a", "0-0", block_ms=1)
    # the mail names the input's mode: an enqueue never interrupts the owner's run
    assert [(m.kind, m.session_ref, m.multitask) for m in mail] == [
        ("input", "default/s1", "enqueue")
    ]
    assert await streams.client.xlen(streams.keys.work) == 0


async def test_idempotency_key_returns_the_same_run(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    body = {"input": 1, "mode": "detached", "idempotency_key": "k-1"}
    task = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json=body))
    [item] = await runner.wait_inbox("s1")
    await runner.claim("s1")
    await runner.start("s1", item.run_id)
    first = (await task).json()
    again = await client.post("/v1/sessions/s1/invoke", json=body)
    assert again.status_code == 202
    assert again.json() == first  # same run, same owner, no second input
    assert len(await runner.wait_inbox("s1")) == 1
    await runner.finish("s1", item.run_id, "out")
    done = (await client.post("/v1/sessions/s1/invoke", json=body)).json()
    assert done["run_id"] == item.run_id and done["status"] == "completed"
    # the attached repeat replays the run from its run.started
    r = await client.post("/v1/sessions/s1/invoke", json={**body, "mode": "stream"})
    assert [e.type for e in ndjson(r.text)] == ["run.started", "run.output", "run.completed"]


async def test_multitask_reject_is_409_session_busy(
    make_settings: SettingsFactory, redis_client: object
) -> None:
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as c:
        ok = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
        assert ok.status_code == 202
        r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached", "multitask": "reject"})
        body = assert_problem(r, 409, "session_busy")
        assert body["pending"] == 1


async def test_multitask_interrupt_cancels_the_active_run(
    make_settings: SettingsFactory, runner: RunnerSide, streams: Streams
) -> None:
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as c:
        runner.client = c
        first = (await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})).json()
        await runner.claim("s1")
        await runner.start("s1", first["run_id"])
        r = await c.post(
            "/v1/sessions/s1/invoke", json={"mode": "detached", "multitask": "interrupt"}
        )
        assert r.status_code == 202
    sk = streams.keys.session("default", "s1")
    assert await streams.cancel_requested(sk, first["run_id"])
    mail = await streams.read_mail("replica-a", "0-0", block_ms=1)
    assert ("cancel", first["run_id"]) in [(m.kind, m.run_id) for m in mail]
    assert len(await streams.read_inbox(sk)) == 2  # the new input waits behind it


async def test_stream_ndjson_ends_at_terminal_and_skips_other_runs(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    # another run's entries in the log before and during this one must not leak in
    other = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"mode": "detached"}))
    [o] = await runner.wait_inbox("s1")
    await runner.claim("s1")
    await runner.start("s1", o.run_id)
    await other
    task = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"input": [1, 2]}))
    items = await runner.wait_inbox("s1", 2)
    mine = items[1].run_id
    await runner.finish("s1", o.run_id, "other-output")
    await runner.start("s1", mine)
    await runner.ingest(
        "s1", mine, ("run.interrupted", {"reason": "owner_death"}), ("run.output", 1)
    )  # not terminal: a restart follows under the same run id
    await runner.finish("s1", mine, 2)
    r = await task
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["x-streamward-run-id"] == mine
    assert r.headers["x-streamward-connection"].startswith("conn_")
    entries = ndjson(r.text)
    assert {e.run_id for e in entries} == {mine}
    assert [e.type for e in entries] == [
        "run.started",
        "run.interrupted",
        "run.output",
        "run.output",
        "run.completed",
    ]
    assert [e.data for e in entries if e.type == "run.output"] == [1, 2]
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and all(e.id == f"{e.seq}-0" for e in entries)
    assert all(e.session_id == "s1" and e.ts.endswith("Z") for e in entries)


async def test_stream_sse_has_ids_and_json_data(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    task = asyncio.create_task(
        client.post(
            "/v1/sessions/s1/invoke", json={"input": 1}, headers={"Accept": "text/event-stream"}
        )
    )
    [item] = await runner.wait_inbox("s1")
    await runner.claim("s1")
    await runner.start("s1", item.run_id)
    await runner.finish("s1", item.run_id, "a")
    r = await task
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e.strip() and not e.startswith(":")]
    assert len(events) == 3
    for ev in events:
        lines = dict(line.split(": ", 1) for line in ev.splitlines())
        data = orjson.loads(lines["data"])
        assert lines["id"] == data["id"]
        assert data["run_id"] == item.run_id


async def test_stream_registers_attached_connection_until_it_ends(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    sk = streams.keys.session("default", "s1")
    task = asyncio.create_task(client.post("/v1/sessions/s1/invoke", json={"input": 1}))
    [item] = await runner.wait_inbox("s1")
    # the stream registers its attachment just after the enqueue: wait for it, bounded
    for _ in range(200):
        live = await client.get("/v1/sessions/s1/liveness")
        if live.json()["attached"] == 1:
            break
        await asyncio.sleep(0.01)
    assert live.json()["attached"] == 1
    await runner.claim("s1")
    await runner.start("s1", item.run_id)
    await runner.finish("s1", item.run_id)
    r = await task
    assert await streams.is_attached(sk, r.headers["x-streamward-connection"]) is False
    assert (await client.get("/v1/sessions/s1/liveness")).json()["attached"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"input": 1, "mode": "later"},
        {"input": 1, "multitask": "sometimes"},
        {"input": 1, "extra": True},
        {"idempotency_key": ""},
        [],
        "text",
    ],
)
async def test_invoke_bad_body_is_422_problem(app: FastAPI, body: object) -> None:
    async with asgi_client(app) as c:
        r = await c.post("/v1/sessions/s1/invoke", json=body)
    assert_problem(r, 422, "validation_error")


async def test_the_plain_detached_invoke_skips_fastapi_routing_and_the_rest_do_not(
    make_settings: SettingsFactory, redis_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api/fastinvoke.py serves the plain detached invoke itself; what it does not serve
    reaches the FastAPI route, and every answer has the app's own shape."""
    from streamward.api import invoke as invocation
    from streamward.api.routes import sessions

    reached: list[str] = []

    class Spy:  # the route module's view of api/invoke.py (the fast path has its own)
        def __getattr__(self, name: str) -> object:
            reached.append(name)
            return getattr(invocation, name)

    monkeypatch.setattr(sessions, "invocation", Spy())
    async with running_app(make_settings(start_timeout_s=0)) as app, asgi_client(app) as c:
        ok = await c.post("/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"})
        assert ok.status_code == 202 and ok.json()["status"] == "queued"
        assert ok.headers["x-streamward-run-id"] == ok.json()["run_id"]
        busy = await c.post(
            "/v1/sessions/s1/invoke", json={"mode": "detached", "multitask": "reject"}
        )
        assert_problem(busy, 409, "session_busy")  # raised after the submit: the app's handler
        assert reached == []  # both served below the router
        bad = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached", "x": 1})
        assert_problem(bad, 422, "validation_error")
        weird = await c.post("/v1/sessions/a%20b/invoke", json={"mode": "detached"})
        assert weird.status_code == 422
        text = await c.post(
            "/v1/sessions/s2/invoke",
            content=b'{"mode": "detached"}',
            headers={"content-type": "text/plain"},
        )
        assert text.status_code == 422  # the app's own answer to a body not sent as JSON
        assert reached == []  # refused by FastAPI before its endpoint
        # a JSON media type FastAPI reads but the fast path leaves to it: the route's answer
        plus = await c.post(
            "/v1/sessions/s3/invoke",
            content=b'{"mode": "detached"}',
            headers={"content-type": "application/merge-patch+json"},
        )
        assert plus.status_code == 202 and plus.json()["status"] == "queued"
        assert "invoke_detached" in reached
