"""Two API instances on one Redis serve the same session interchangeably (they are stateless)."""

from __future__ import annotations

import asyncio

import httpx

from streamward.api.schemas import LogEntryOut
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, live_server
from tests.api.helpers import RunnerSide, ndjson, wait_for


async def test_invoke_on_one_instance_ingest_and_follow_on_the_other(
    make_settings: SettingsFactory, redis_client: object, store: LeaseStore, streams: Streams
) -> None:
    settings = make_settings()
    async with (
        live_server(settings) as url_a,
        live_server(settings) as url_b,
        httpx.AsyncClient(base_url=url_a, timeout=30) as a,
        httpx.AsyncClient(base_url=url_b, timeout=30) as b,
    ):
        runner = RunnerSide(b, store, streams, "replica-a")  # ships through instance B
        await runner.register()

        # detached on A answers once B has ingested run.started
        detached = asyncio.create_task(
            a.post("/v1/sessions/s1/invoke", json={"mode": "detached", "input": 1})
        )
        [first] = await runner.wait_inbox("s1")
        token = await runner.claim("s1")
        await runner.start("s1", first.run_id)
        r = await detached
        assert r.json()["status"] == "running"
        assert r.json()["owner"] == {"replica_id": "replica-a", "token": token}

        # attached on A, also followed on B; the runner writes through B
        async with (
            a.stream("POST", "/v1/sessions/s1/invoke", json={"input": 2}) as on_a,
            b.stream("GET", "/v1/sessions/s1/events", params={"after": "0"}) as on_b,
        ):
            run2 = on_a.headers["x-streamward-run-id"]
            conn_a = on_a.headers["x-streamward-connection"]
            live = (await b.get("/v1/sessions/s1/liveness")).json()
            assert live["attached"] == 2  # B sees A's connection
            await runner.finish("s1", first.run_id, "x")
            await runner.start("s1", run2)
            await runner.ingest("s1", run2, ("run.output", "y"))
            a_lines = on_a.aiter_lines()
            got_a = [LogEntryOut.model_validate_json(await anext(a_lines)) for _ in range(2)]
            assert [e.type for e in got_a] == ["run.started", "run.output"]
            # detach A's connection through B: A's stream ends cleanly, the run goes on
            d = await b.post("/v1/sessions/s1/detach", json={"connection_id": conn_a})
            assert d.json()["detached"] == 1
            assert [x async for x in a_lines] == []
            await runner.finish("s1", run2)
            b_lines = on_b.aiter_lines()
            got_b = [LogEntryOut.model_validate_json(await anext(b_lines)) for _ in range(6)]
            assert [e.seq for e in got_b] == [1, 2, 3, 4, 5, 6]
            await a.post("/v1/sessions/s1/detach")

        async def idle() -> bool:
            return bool((await a.get("/v1/sessions/s1/liveness")).json()["attached"] == 0)

        await wait_for(idle, "no attached connections")
        # both instances read the same transcript
        ta = (await a.get("/v1/sessions/s1/transcript")).json()
        tb = (await b.get("/v1/sessions/s1/transcript")).json()
        assert ta == tb and len(ta["items"]) == 6
        resumed = await a.get(
            "/v1/sessions/s1/events", params={"run_id": run2, "after": got_a[-1].id}
        )
        assert [e.type for e in ndjson(resumed.text)] == ["run.completed"]
