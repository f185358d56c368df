"""The Python client against a live API: calls, errors, and stream resume after a cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from streamward.client import (
    AsyncStreamwardClient,
    StreamState,
    StreamwardAPIError,
    StreamwardClient,
)
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.api.helpers import ADMIN_TOKEN, RunnerSide


class _CutStream(httpx.AsyncByteStream):
    """Passes a response body through, then fails like a dropped connection."""

    def __init__(self, inner: httpx.AsyncByteStream, after_lines: int) -> None:
        self.inner = inner
        self.after_lines = after_lines

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lines = 0
        async for chunk in self.inner:
            yield chunk
            lines += chunk.count(b"\n")
            if lines >= self.after_lines:
                raise httpx.ReadError("connection dropped (test)")

    async def aclose(self) -> None:
        await self.inner.aclose()


class CutFirstStream(httpx.AsyncBaseTransport):
    """A real transport that cuts the first streamed response of ``path_suffix``."""

    def __init__(self, path_suffix: str, after_lines: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.path_suffix = path_suffix
        self.after_lines = after_lines
        self.cut = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if self.cut or not request.url.path.endswith(self.path_suffix) or resp.status_code != 200:
            return resp
        self.cut += 1
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        return httpx.Response(
            resp.status_code,
            headers=resp.headers,
            stream=_CutStream(resp.stream, self.after_lines),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def side(live_url: str, store: LeaseStore, streams: Streams) -> AsyncIterator[RunnerSide]:
    async with httpx.AsyncClient(base_url=live_url) as http:
        runner = RunnerSide(http, store, streams, "replica-a")
        await runner.register()
        yield runner


async def _produce(runner: RunnerSide, outputs: int) -> str:
    [item] = await runner.wait_inbox("s1")
    await runner.claim("s1")
    await runner.start("s1", item.run_id)
    for i in range(outputs):
        await runner.ingest("s1", item.run_id, ("run.output", i))
    await runner.finish("s1", item.run_id)
    return item.run_id


async def test_stream_resumes_after_a_dropped_connection(live_url: str, side: RunnerSide) -> None:
    transport = CutFirstStream("/invoke", after_lines=3)
    async with AsyncStreamwardClient(live_url, transport=transport, resume_delay_s=0) as client:
        producer = asyncio.create_task(_produce(side, 20))
        state = StreamState("s1")
        entries = [e async for e in client.stream("s1", input={"n": 20}, state=state)]
        run_id = await producer
    assert transport.cut == 1 and state.resumes == 1
    assert state.run_id == run_id and state.done
    assert [e.seq for e in entries] == list(range(1, 23))  # none lost, none repeated
    assert [e.data for e in entries if e.type == "run.output"] == list(range(20))
    assert entries[-1].type == "run.completed"


async def test_follow_existing_run_resumes_from_after(live_url: str, side: RunnerSide) -> None:
    async with AsyncStreamwardClient(live_url) as client:
        accepted = await client.invoke("s1", {"q": 1})
        assert accepted.status == "queued" and accepted.owner is None
        run_id = await _produce(side, 3)
        tail = [e async for e in client.stream("s1", run_id=run_id, after="2-0")]
        assert [e.seq for e in tail] == [3, 4, 5]
        everything = await client.events("s1")
        assert len(everything) == 5


async def test_client_calls_and_errors(live_url: str, side: RunnerSide) -> None:
    async with AsyncStreamwardClient(live_url, admin_token=ADMIN_TOKEN) as client:
        run = await client.invoke("s1", "hi", idempotency_key="k")
        assert (await client.invoke("s1", "hi", idempotency_key="k")).run_id == run.run_id
        with pytest.raises(StreamwardAPIError) as err:
            await client.invoke("s1", multitask="reject")
        assert (err.value.status, err.value.code) == (409, "session_busy")
        with pytest.raises(StreamwardAPIError) as err:
            await client.liveness("nope")
        assert (err.value.status, err.value.code) == (404, "session_not_found")
        with pytest.raises(StreamwardAPIError) as err:
            await client.cancel("s1")
        assert err.value.code == "no_active_run"

        token = await side.claim("s1")
        res = await client.ingest(
            "s1", run.run_id, token, [{"seq": 1, "type": "run.started", "data": {}}]
        )
        assert (res.accepted, res.last_seq) == (1, 1)
        live = await client.liveness("s1")
        assert live.alive and live.active_run_id == run.run_id and live.pending == 1
        assert (await client.cancel("s1")).run_id == run.run_id
        assert (await client.detach("s1")).detached == 0
        assert [e.seq for e in (await client.transcript("s1")).items] == [1]
        assert [s.session_id for s in (await client.sessions()).items] == ["s1"]
        assert (await client.session("s1")).active_run_id == run.run_id

        hb = await client.heartbeat(
            "replica-a", "replica-a-inc", [{"session_id": "s1", "token": token}]
        )
        assert hb.renewed == ["s1"]
        assert [x.state for x in (await client.locks()).items] == ["held"]
        assert (await client.lock("s1")).holder == "replica-a"
        assert [r.replica_id for r in await client.replicas()] == ["replica-a"]
        released = await client.release_lock("s1")
        assert released.before.state == "held" and released.after.state == "free"
        assert (await client.drain_replica("replica-a")).status == "draining"
        with pytest.raises(StreamwardAPIError) as err:
            await client.ingest("s1", run.run_id, token, [{"seq": 2, "type": "run.output"}])
        assert (err.value.status, err.value.code) == (409, "stale_token")
        assert (await client.delete_session("s1")).status == "deleted"

    async with AsyncStreamwardClient(live_url, admin_token="wrong") as client:
        with pytest.raises(StreamwardAPIError) as err:
            await client.replicas()
        assert (err.value.status, err.value.code) == (403, "invalid_token")


async def test_sync_client(live_url: str, side: RunnerSide) -> None:
    def calls() -> tuple[str, list[str]]:
        with StreamwardClient(live_url) as client:
            entries = client.invoke("s1", [1, 2], detached=False)
            return entries[0].run_id, [e.type for e in entries]

    call = asyncio.create_task(asyncio.to_thread(calls))
    run_id = await _produce(side, 2)
    got_run, types = await call
    assert got_run == run_id
    assert types == ["run.started", "run.output", "run.output", "run.completed"]
