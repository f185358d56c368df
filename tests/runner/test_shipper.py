"""The transcript shipper against the real API: order, batching, retries, fencing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.store import LeaseStore
from streamward.runner.shipper import Fenced, Shipper, ShipStopped, StaleOwner
from streamward.tools.fleet import Fleet
from streamward.tools.server import free_port

INGEST = "/admin/sessions/transcripts/ingest"


class Requests:
    """Counts ingest requests and the run ids each carried."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.bodies.append(orjson.loads(request.content))


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, Requests]]:
    seen = Requests()
    async with httpx.AsyncClient(event_hooks={"request": [seen]}) as client:
        yield client, seen


def _shipper(
    client: httpx.AsyncClient,
    base_url: str,
    fleet: Fleet,
    sk: SessionKeys,
    token: int,
    **kw: Any,
) -> Shipper:
    shipper = Shipper(
        http=client,
        url=base_url + INGEST,
        admin_token=fleet.admin_token,
        session=sk,
        token=token,
        next_seq=kw.pop("next_seq", 1),
        can_write=kw.pop("can_write", lambda: True),
        **kw,
    )
    shipper.start()
    return shipper


async def _log(client: aioredis.Redis, sk: SessionKeys) -> list[dict[str, Any]]:
    c: Any = client
    return [
        {"seq": int(f["seq"]), "type": f["type"], "run_id": f["run_id"], "token": int(f["token"]),
         "data": orjson.loads(f["data"])}
        for _, f in await c.xrange(sk.log)
    ]  # fmt: skip


async def test_ships_in_order_coalescing_each_run_separately(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    api = fleet.start_api()
    sk = keys.session("default", "ship-order")
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    client, seen = http
    shipper = _shipper(client, api.url, fleet, sk, lease.token, linger_s=0.01)
    expected: list[tuple[str, str, Any]] = []
    for run in ("run_a", "run_b"):
        expected.append((run, "run.started", {"attempt": 1}))
        expected += [(run, "run.output", {"i": i}) for i in range(100)]
        expected.append((run, "run.completed", {"outputs": 100}))
    seqs = [await shipper.put(run, etype, data) for run, etype, data in expected]
    assert seqs == list(range(1, len(expected) + 1))
    await shipper.flush(timeout_s=20)
    await shipper.close()
    log = await _log(redis_client, sk)
    assert [(e["run_id"], e["type"], e["data"]) for e in log] == expected
    assert [e["seq"] for e in log] == seqs
    assert all(e["token"] == lease.token for e in log)
    # coalesced: far fewer requests than entries, and never two runs in one request
    assert len(seen.bodies) < len(expected) // 10
    for body in seen.bodies:
        assert {expected[e["seq"] - 1][0] for e in body["entries"]} == {body["run_id"]}
    sent = [e["seq"] for b in seen.bodies for e in b["entries"]]
    assert sent == sorted(sent)


async def test_retries_until_the_api_is_up_and_never_duplicates(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    port = free_port()
    sk = keys.session("default", "ship-retry")
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    client, _ = http
    retries = 0

    def on_retry() -> None:
        nonlocal retries
        retries += 1

    shipper = _shipper(
        client, f"http://127.0.0.1:{port}", fleet, sk, lease.token, on_retry=on_retry
    )
    for i in range(20):
        await shipper.put("run_r", "run.output", {"i": i})
    await asyncio.sleep(0.5)
    assert retries >= 1 and shipper.acked_seq == 0  # nobody is listening yet
    await asyncio.to_thread(fleet.start_api, port)
    await shipper.flush(timeout_s=20)
    await shipper.close()
    log = await _log(redis_client, sk)
    assert [e["seq"] for e in log] == list(range(1, 21))
    assert [e["data"]["i"] for e in log] == list(range(20))
    # a retry whose answer was lost resends the same seqs: the endpoint stores them once
    again = _shipper(client, f"http://127.0.0.1:{port}", fleet, sk, lease.token)
    for i in range(20):
        await again.put("run_r", "run.output", {"i": i})
    await again.flush(timeout_s=20)
    await again.close()
    assert await _log(redis_client, sk) == log


async def test_stale_token_stops_the_shipper_and_nothing_lands(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    api = fleet.start_api()
    sk = keys.session("default", "ship-stale")
    old = await store.acquire(sk, "old", "inc-old", 60_000)
    await store.force_release(sk, "test")
    new = await store.acquire(sk, "new", "inc-new", 60_000)
    assert new.token > old.token
    stopped: list[ShipStopped] = []
    client, _ = http
    shipper = _shipper(client, api.url, fleet, sk, old.token, on_stop=stopped.append)
    await shipper.put("run_s", "run.started", {})
    with pytest.raises(StaleOwner):
        await shipper.flush(timeout_s=20)
    assert len(stopped) == 1 and isinstance(stopped[0], StaleOwner)
    with pytest.raises(StaleOwner):
        await shipper.put("run_s", "run.output", {})
    await shipper.close()
    assert await _log(redis_client, sk) == []


async def test_fenced_replica_ships_nothing(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    api = fleet.start_api()
    sk = keys.session("default", "ship-fenced")
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    client, seen = http
    shipper = _shipper(client, api.url, fleet, sk, lease.token, can_write=lambda: False)
    await shipper.put("run_f", "run.started", {})
    with pytest.raises(Fenced):
        await shipper.flush(timeout_s=20)
    await shipper.close()
    assert seen.bodies == []
    assert await _log(redis_client, sk) == []


async def test_oversized_entries_become_markers_and_bad_data_is_refused(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    api = fleet.start_api()
    sk = keys.session("default", "ship-big")
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    client, _ = http
    shipper = _shipper(client, api.url, fleet, sk, lease.token, entry_max_bytes=2048)
    with pytest.raises(TypeError):
        await shipper.put("run_b", "run.output", {"not json": object()})
    await shipper.put("run_b", "run.output", {"blob": "x" * 5000})
    await shipper.flush(timeout_s=20)
    await shipper.close()
    log = await _log(redis_client, sk)
    assert [e["seq"] for e in log] == [1]  # the refused put took no seq
    assert log[0]["data"]["truncated"] is True and log[0]["data"]["bytes"] > 5000


class RealApi(httpx.AsyncBaseTransport):
    """The real API; subclasses change what a post carrying ``advance`` gets."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()

    @staticmethod
    async def carries_advance(request: httpx.Request) -> bool:
        await request.aread()
        return "advance" in orjson.loads(request.content)


class OlderApi(RealApi):
    """The real API behind an older one's validation: a body with ``advance`` gets the 422
    an API without ingestAdvance answers (an unknown field)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if await self.carries_advance(request):
            problem = {"code": "invalid_input", "errors": [{"loc": ["body", "advance"]}]}
            return httpx.Response(422, json=problem)
        return await self.real.handle_async_request(request)


async def test_the_last_post_of_a_run_consumes_its_input_and_answers_the_next(
    fleet: Fleet,
    store: LeaseStore,
    keys: Keys,
    redis_client: aioredis.Redis,
    http: tuple[httpx.AsyncClient, Requests],
) -> None:
    """flush(advance=...): only the post carrying the run's last entry asks the API to
    consume the input (ingestAdvance-7); its answer is the next input's peek."""
    api = fleet.start_api()
    sk = keys.session("default", "ship-advance")
    first = await store.enqueue(sk, "run_1", '{"n": 1}')
    await store.enqueue(sk, "run_2", '{"n": 2}')
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    client, seen = http
    shipper = _shipper(client, api.url, fleet, sk, lease.token, batch_max=2, linger_s=0.0)
    try:
        for i in range(4):
            await shipper.put("run_1", "run.output", {"i": i})
        await shipper.put("run_1", "run.completed", {})
        assert first.entry_id is not None
        peek = await shipper.flush(advance=(first.entry_id, 16, ("tester", 3)))
    finally:
        await shipper.close()
    assert peek is not None and [m.run_id for m in peek.metas] == ["run_2"]
    assert peek.head is not None and peek.head.parse().input == {"n": 2} and peek.owners == 1
    assert [e["seq"] for e in await _log(redis_client, sk)] == [1, 2, 3, 4, 5]
    assert await redis_client.xlen(sk.inbox) == 1  # run_1's input consumed
    carried = [[e["seq"] for e in b["entries"]] for b in seen.bodies if "advance" in b]
    assert carried == [[5]]  # the batch with the terminal entry, not the earlier ones
    assert len(seen.bodies) == 3


async def test_an_older_api_refusing_the_advance_gets_the_entries_alone(
    fleet: Fleet, store: LeaseStore, keys: Keys, redis_client: aioredis.Redis
) -> None:
    """An API without ingestAdvance answers 422 to the field: the entries are sent again
    without it, flush answers None (the owner advances itself), and the next runs' posts
    do not ask again for a while."""
    api = fleet.start_api()
    sk = keys.session("default", "ship-older")
    first = await store.enqueue(sk, "run_1", "{}")
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    seen = Requests()
    async with httpx.AsyncClient(transport=OlderApi(), event_hooks={"request": [seen]}) as client:
        shipper = _shipper(client, api.url, fleet, sk, lease.token, linger_s=0.0)
        try:
            assert first.entry_id is not None
            await shipper.put("run_1", "run.completed", {})
            assert await shipper.flush(advance=(first.entry_id, 16, None)) is None
            await shipper.put("run_2", "run.completed", {})
            assert await shipper.flush(advance=("0-1", 16, None)) is None
        finally:
            await shipper.close()
    assert [e["run_id"] for e in await _log(redis_client, sk)] == ["run_1", "run_2"]
    assert await redis_client.xlen(sk.inbox) == 1  # nothing consumed by the older API
    assert ["advance" in b for b in seen.bodies] == [True, False, False]


class LosesFirstAnswer(RealApi):
    """The real API, but the answer to the first post that carries ``advance`` is lost
    (the API did the work; the client sees a dropped connection)."""

    lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        advance = await self.carries_advance(request)
        resp = await self.real.handle_async_request(request)
        if not self.lost and advance:
            self.lost += 1
            await resp.aread()
            raise httpx.ReadError("connection reset after the request", request=request)
        return resp


async def test_a_post_whose_answer_was_lost_is_retried_with_its_advance(
    fleet: Fleet, store: LeaseStore, keys: Keys, redis_client: aioredis.Redis
) -> None:
    """The retry carries the same advance: answered alike (the input consumed once), so the
    flush still returns the peek; a flush told to stop asking sends none."""
    api = fleet.start_api()
    sk = keys.session("default", "ship-lost")
    first = await store.enqueue(sk, "run_1", "{}")
    second = await store.enqueue(sk, "run_2", '{"n": 2}')
    lease = await store.acquire(sk, "tester", "inc-1", 60_000)
    transport, seen = LosesFirstAnswer(), Requests()
    async with httpx.AsyncClient(transport=transport, event_hooks={"request": [seen]}) as client:
        shipper = _shipper(client, api.url, fleet, sk, lease.token, linger_s=0.0)
        try:
            assert first.entry_id and second.entry_id
            await shipper.put("run_1", "run.completed", {})
            peek = await shipper.flush(advance=(first.entry_id, 16, None))
            assert transport.lost == 1
            assert peek is not None and [m.run_id for m in peek.metas] == ["run_2"]
            await shipper.put("run_2", "run.completed", {})
            unasked = await shipper.flush(advance=(second.entry_id, 16, None), still=lambda: False)
            assert unasked is None
        finally:
            await shipper.close()
    assert ["advance" in b for b in seen.bodies] == [True, True, False]
    assert await redis_client.xlen(sk.inbox) == 1  # run_1's input consumed, once; run_2's not
    assert [e["run_id"] for e in await _log(redis_client, sk)] == ["run_1", "run_2"]
