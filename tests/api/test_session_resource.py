"""The session resource against the real app on real Redis: create (with and without an id,
idempotent, with a first input), metadata limits, merge-patch and its ``session.updated``
entry (written by the API when no owner holds the session), and the 404 / 409 answers.
Start and stop with real runner processes: tests/runner/test_session_control.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from streamward.api.sessionops import METADATA_MAX_BYTES, merge_patch
from streamward.client import AsyncStreamwardClient, StreamwardAPIError, StreamwardClient
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


async def _create(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> Any:
    return await client.post("/v1/sessions", json=body, headers=headers)


async def test_create_with_a_given_id_writes_meta_and_indexes_it(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, keys: Keys
) -> None:
    body = {"id": "s1", "title": "Fix the build", "metadata": {"team": "ci", "n": 3}}
    resp = await _create(client, {**body, "type": "chat"})
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert got["session_id"] == "s1" and got["status"] == "idle"
    assert (got["title"], got["metadata"], got["type"]) == (
        "Fix the build",
        body["metadata"],
        "chat",
    )
    assert got["run"] is None and got["created_at"] and got["updated_at"]
    meta = await redis_client.hgetall(keys.session("default", "s1").meta)
    assert orjson.loads(meta["metadata"]) == body["metadata"]
    assert (meta["title"], meta["type"], meta["status"]) == ("Fix the build", "chat", "idle")
    assert await redis_client.zscore(keys.sessions, "default/s1") is not None
    again = await client.get("/v1/sessions/s1")
    assert again.json()["title"] == "Fix the build"


async def test_create_without_id_makes_one_and_a_conflicting_id_is_409(
    client: httpx.AsyncClient,
) -> None:
    a, b = await _create(client, {}), await _create(client, {})
    assert a.status_code == b.status_code == 201
    ids = {a.json()["session_id"], b.json()["session_id"]}
    assert len(ids) == 2 and all(ID.fullmatch(i) for i in ids)
    assert a.json()["metadata"] == {} and a.json()["title"] is None
    dup = await _create(client, {"id": a.json()["session_id"]})
    assert dup.status_code == 409 and dup.json()["code"] == "session_exists"
    # an id an invoke created exists too
    await client.post("/v1/sessions/inv/invoke", json={"input": 1, "mode": "detached"})
    dup = await _create(client, {"id": "inv"})
    assert dup.status_code == 409 and dup.json()["code"] == "session_exists"


async def test_idempotency_key_returns_the_same_session_with_200(
    client: httpx.AsyncClient,
) -> None:
    first = await _create(client, {"title": "t"}, **{"Idempotency-Key": "k-1"})
    again = await _create(client, {"title": "t"}, **{"Idempotency-Key": "k-1"})
    other = await _create(client, {"title": "t"}, **{"Idempotency-Key": "k-2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["session_id"] == again.json()["session_id"]
    assert other.json()["session_id"] != first.json()["session_id"]
    # with an id: the key must be the one it was created with
    assert (await _create(client, {"id": "x"}, **{"Idempotency-Key": "a"})).status_code == 201
    assert (await _create(client, {"id": "x"}, **{"Idempotency-Key": "a"})).status_code == 200
    wrong = await _create(client, {"id": "x"}, **{"Idempotency-Key": "b"})
    assert wrong.status_code == 409 and wrong.json()["code"] == "session_exists"
    assert (await _create(client, {"id": "x"})).status_code == 409


async def test_first_input_is_enqueued_once_across_repeats(
    client: httpx.AsyncClient, store: LeaseStore, streams: Streams, keys: Keys, app: Any
) -> None:
    app.state.sw.settings.start_timeout_s = 0.2  # no runner here: the answer is queued
    headers = {"Idempotency-Key": "with-input"}
    body = {"title": "t", "input": {"text": "hi"}}
    first = await _create(client, body, **headers)
    again = await _create(client, body, **headers)
    assert (first.status_code, again.status_code) == (201, 200)
    run = first.json()["run"]
    assert run["status"] == "queued" and run["run_id"].startswith("run_")
    assert again.json()["run"]["run_id"] == run["run_id"]
    sk = keys.session("default", first.json()["session_id"])
    assert await streams.pending(sk) == 1
    assert first.json()["status"] == "active"  # an input makes it active
    # an explicit null input is an input too
    null = await _create(client, {"input": None})
    assert null.json()["run"] is not None


async def test_metadata_over_16_kib_is_413_and_nothing_is_created(
    client: httpx.AsyncClient,
) -> None:
    big = {"blob": "x" * METADATA_MAX_BYTES}
    resp = await _create(client, {"id": "big", "metadata": big})
    assert resp.status_code == 413 and resp.json()["code"] == "metadata_too_large"
    assert resp.json()["max_bytes"] == METADATA_MAX_BYTES
    assert (await client.get("/v1/sessions/big")).status_code == 404
    assert (await _create(client, {"id": "big", "metadata": {"a": 1}})).status_code == 201
    patched = await client.patch("/v1/sessions/big", json={"metadata": big})
    assert patched.status_code == 413 and patched.json()["code"] == "metadata_too_large"
    assert (await client.get("/v1/sessions/big")).json()["metadata"] == {"a": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": [1, 2]},
        {"metadata": "x"},
        {"id": "bad id"},
        {"type": "no spaces"},
        {"title": "t" * 501},
        {"unknown": 1},
    ],
)
async def test_bad_bodies_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    resp = await _create(client, body)
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error", resp.text


def test_merge_patch_follows_rfc_7396() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "keep": [1]}
    patch = {"a": "z", "c": {"f": None, "h": 1}, "new": {"x": None, "y": 2}, "keep": None}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e", "h": 1}, "new": {"y": 2}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


async def test_patch_merges_and_appends_session_updated_with_the_next_seq(
    client: httpx.AsyncClient, redis_client: aioredis.Redis, streams: Streams, keys: Keys
) -> None:
    await _create(client, {"id": "p", "title": "old", "metadata": {"a": 1, "b": {"c": 2}}})
    sk = keys.session("default", "p")
    before = await redis_client.hget(sk.meta, "updated_ms")
    await asyncio.sleep(0.005)
    resp = await client.patch(
        "/v1/sessions/p", json={"title": "new", "metadata": {"a": None, "b": {"d": 3}}}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["title"] == "new"
    assert resp.json()["metadata"] == {"b": {"c": 2, "d": 3}}
    assert int(str(await redis_client.hget(sk.meta, "updated_ms"))) > int(str(before))
    log = await streams.read_log(sk)
    assert [(e.seq, e.type, e.run_id) for e in log] == [(1, "session.updated", "session")]
    assert log[0].data == {"title": "new", "metadata": {"b": {"c": 2, "d": 3}}}
    # title only; then title removed; metadata untouched by both
    await client.patch("/v1/sessions/p", json={"title": None})
    got = (await client.get("/v1/sessions/p")).json()
    assert got["title"] is None and got["metadata"] == {"b": {"c": 2, "d": 3}}
    await client.patch("/v1/sessions/p", json={"metadata": None})
    assert (await client.get("/v1/sessions/p")).json()["metadata"] == {}
    log = await streams.read_log(sk)
    assert [e.seq for e in log] == [1, 2, 3] and log[-1].data == {"title": None, "metadata": {}}
    assert await redis_client.hget(sk.meta, "last_seq") == "3"


async def test_patch_of_an_invoked_session_and_an_attached_stream_sees_it(
    live_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        await client.post("/v1/sessions/inv/invoke", json={"input": 1, "mode": "detached"})
        seen: list[dict[str, Any]] = []
        attached = asyncio.Event()

        async def follow() -> None:
            async with client.stream("GET", "/v1/sessions/inv/events?follow=true") as resp:
                attached.set()
                async for line in resp.aiter_lines():
                    if line:
                        seen.append(orjson.loads(line))
                        return

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(attached.wait(), 5)
        resp = await client.patch("/v1/sessions/inv", json={"metadata": {"k": "v"}})
        assert resp.status_code == 200 and resp.json()["metadata"] == {"k": "v"}
        await asyncio.wait_for(watcher, 5)
    assert seen[0]["type"] == "session.updated" and seen[0]["data"]["metadata"] == {"k": "v"}
    assert seen[0]["run_id"] == "session" and seen[0]["id"] == "1-0"


async def test_concurrent_patches_of_different_keys_all_land(client: httpx.AsyncClient) -> None:
    await _create(client, {"id": "c"})
    await asyncio.gather(
        *[client.patch("/v1/sessions/c", json={"metadata": {f"k{i}": i}}) for i in range(20)]
    )
    got = (await client.get("/v1/sessions/c")).json()["metadata"]
    assert got == {f"k{i}": i for i in range(20)}


async def test_unknown_and_deleted_sessions(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("PATCH", "/v1/sessions/nope"),
        ("POST", "/v1/sessions/nope/start"),
        ("POST", "/v1/sessions/nope/stop"),
    ]:
        resp = await client.request(method, path, json={} if method == "PATCH" else None)
        assert resp.status_code == 404 and resp.json()["code"] == "session_not_found", path
    await _create(client, {"id": "gone", "title": "old"})
    assert (await client.delete("/v1/sessions/gone")).status_code == 200
    resp = await client.patch("/v1/sessions/gone", json={"title": "x"})
    assert resp.status_code == 409 and resp.json()["code"] == "session_retired"
    resp = await client.post("/v1/sessions/gone/start")
    assert resp.status_code == 409 and resp.json()["code"] == "session_retired"
    # a deleted id can be created again: a new life, the old title gone
    again = await _create(client, {"id": "gone"})
    assert again.status_code == 201 and again.json()["title"] is None
    assert again.json()["status"] == "idle"


async def test_start_without_a_runner_answers_starting_and_says_why(
    client: httpx.AsyncClient, app: Any
) -> None:
    app.state.sw.settings.start_timeout_s = 0.2
    await _create(client, {"id": "lonely", "type": "nobody"})
    resp = await client.post("/v1/sessions/lonely/start")
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "session_id": "lonely",
        "status": "starting",
        "owner": None,
        "waiting_for_type": "nobody",
    }
    # stop with no owner: nothing to passivate
    resp = await client.post("/v1/sessions/lonely/stop")
    assert resp.status_code == 200 and resp.json()["status"] == "stopped"


async def test_python_clients_create_update_start_stop(live_url: str) -> None:
    async with AsyncStreamwardClient(live_url) as client:
        made = await client.create_session(
            "cl", title="t", metadata={"a": 1}, session_type="nobody", idempotency_key="k"
        )
        assert (made.session_id, made.title, made.metadata) == ("cl", "t", {"a": 1})
        assert made.run is None
        again = await client.create_session("cl", idempotency_key="k")
        assert again.created_at == made.created_at
        with pytest.raises(StreamwardAPIError) as err:
            await client.create_session("cl")
        assert (err.value.status, err.value.code) == (409, "session_exists")
        patched = await client.update_session("cl", title=None, metadata={"a": None, "b": 2})
        assert (patched.title, patched.metadata) == (None, {"b": 2})
        started = await client.start_session("cl")  # start timeout 0, nobody serves the type
        assert (started.status, started.waiting_for_type) == ("starting", "nobody")
        stopped = await client.stop_session("cl", cancel=True)
        assert (stopped.status, stopped.owner) == ("stopped", None)
        with_input = await client.create_session(input=None)
        assert with_input.run is not None and with_input.run.status == "queued"

    def sync_calls() -> tuple[str, str | None, str]:
        with StreamwardClient(live_url) as client:
            made = client.create_session(title="sync", idempotency_key="sk")
            patched = client.update_session(made.session_id, title="renamed")
            start = client.start_session(made.session_id)
            stop = client.stop_session(made.session_id)
            return made.session_id, patched.title, f"{start.status}/{stop.status}"

    sid, title, states = await asyncio.to_thread(sync_calls)
    assert sid.startswith("s_") and title == "renamed" and states == "starting/stopped"
