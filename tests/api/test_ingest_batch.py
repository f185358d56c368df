"""``POST /admin/sessions/transcripts/ingest/batch``: several sessions' ingests in one request,
each answered as the single ingest would answer it alone (real Redis, the real scripts)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from streamward.lua.streams import Streams
from tests.api.helpers import ADMIN, RunnerSide, assert_problem

pytestmark = pytest.mark.usefixtures("no_start_wait")
URL = "/admin/sessions/transcripts/ingest"


def _body(session: str, token: int, *entries: dict[str, Any], run_id: str = "run_x") -> Any:
    return {"session_id": session, "run_id": run_id, "token": token, "entries": list(entries)}


def _e(seq: int, type_: str = "run.output", data: Any = None) -> dict[str, Any]:
    return {"seq": seq, "type": type_, "data": data}


async def test_batch_answers_each_item_as_the_single_ingest_would(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    a, b, c = [await runner.claim(s) for s in ("a", "b", "c")]
    await runner.claim("d")
    items = [
        _body("a", a, _e(1, "run.started", {"r": 1}), _e(2, data=[1, 2])),
        _body("b", b + 1, _e(1, "run.started")),  # a stale token: refused alone
        _body("c", c, _e(1), _e(3)),  # a gap: refused alone
        _body("d", 1, {"seq": 1, "type": "run.started", "ts": "yesterday"}),  # bad timestamp
        _body("a", a, _e(2, data=[1, 2]), _e(3, "run.completed")),  # a's next batch, after
    ]
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 409, 422, 422, 200]
    assert results[0]["body"] == {"accepted": 2, "duplicates": 0, "last_seq": 2}
    assert results[4]["body"] == {"accepted": 1, "duplicates": 1, "last_seq": 3}
    assert results[1]["body"]["code"] == "stale_token"
    assert results[2]["body"]["code"] == "seq_gap"
    assert results[3]["body"]["code"] == "invalid_timestamp"
    assert "entries.0.ts" in results[3]["body"]["detail"]
    # the same refusals as the single endpoint, field for field
    for i, item in ((1, items[1]), (2, items[2])):
        alone = await client.post(URL, headers=ADMIN, json=item)
        assert alone.status_code == results[i]["status"]
        assert alone.json() == results[i]["body"]
    # only the accepted items were written
    log_a = await streams.read_log(streams.keys.session("default", "a"))
    assert [(e.seq, e.type) for e in log_a] == [
        (1, "run.started"),
        (2, "run.output"),
        (3, "run.completed"),
    ]
    for s in ("b", "c", "d"):
        assert await streams.read_log(streams.keys.session("default", s)) == []
    # a replayed batch request (a retry after a lost answer) duplicates nothing
    again = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": items[:1]})
    assert again.json()["results"][0]["body"] == {"accepted": 0, "duplicates": 2, "last_seq": 3}


async def test_batch_request_refusals(client: httpx.AsyncClient, runner: RunnerSide) -> None:
    token = await runner.claim("a")
    one = _body("a", token, _e(1, "run.started"))
    assert_problem(await client.post(f"{URL}/batch", json={"batches": [one]}), 401, "missing_token")
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": []})
    assert_problem(r, 422, "validation_error")
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": [one] * 257})
    assert_problem(r, 422, "validation_error")
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": [{**one, "token": 0}]})
    assert_problem(r, 422, "validation_error")  # one invalid item refuses the request


async def test_the_batch_is_served_below_fastapi_routing_and_refusals_are_the_apps(
    client: httpx.AsyncClient, runner: RunnerSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api/fastinvoke.py calls the route's endpoint itself for a valid, authorized batch;
    anything it would refuse goes to FastAPI, whose answers the refusals test above checks."""
    from streamward.api.routes import ingest

    served: list[int] = []
    endpoint = ingest.ingest_batch

    async def spy(body: Any, request: Any) -> Any:  # the routes captured the original
        served.append(len(body.batches))
        return await endpoint(body, request)

    monkeypatch.setattr(ingest, "ingest_batch", spy)
    token = await runner.claim("a")
    one = _body("a", token, _e(1, "run.started"))
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": [one]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 200
    assert served == [1]
    # no token, a wrong one, an invalid body: the app's own answers, not the fast path's
    assert_problem(await client.post(f"{URL}/batch", json={"batches": [one]}), 401, "missing_token")
    wrong = {"authorization": "Bearer nope"}
    assert (
        await client.post(f"{URL}/batch", headers=wrong, json={"batches": [one]})
    ).status_code == 403
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": []})
    assert_problem(r, 422, "validation_error")
    assert served == [1]


async def test_a_lone_ingest_is_served_below_fastapi_routing_too(
    client: httpx.AsyncClient, runner: RunnerSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST .../ingest`` (a runner's lone post) takes the same fast path as the batch."""
    from streamward.api.routes import ingest

    served: list[str] = []
    endpoint = ingest.ingest

    async def spy(body: Any, request: Any) -> Any:
        served.append(body.run_id)
        return await endpoint(body, request)

    monkeypatch.setattr(ingest, "ingest", spy)
    token = await runner.claim("a")
    one = _body("a", token, _e(1, "run.started"))
    r = await client.post(URL, headers=ADMIN, json=one)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert served == ["run_x"]
    assert_problem(await client.post(URL, json=one), 401, "missing_token")
    r = await client.post(URL, headers=ADMIN, json={**one, "entries": "nope"})
    assert_problem(r, 422, "validation_error")
    await runner.store.force_release(runner.keys("a"), "test")
    await runner.claim("a")  # a newer owner: the first token is stale
    stale = _body("a", token, _e(2, "run.output"))
    assert_problem(await client.post(URL, headers=ADMIN, json=stale), 409, "stale_token")
    assert served == ["run_x", "run_x"]  # the endpoint's own refusal, through the fast path


async def test_an_ingest_may_consume_its_runs_input_alone_or_in_a_batch(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    """``advance`` on a run's last post: after the append, the input is consumed and the
    next one peeked (ingestAdvance-7), the peek in the answer; a refused append consumes
    nothing, and an invalid advance is the request's 422."""
    sk = {s: runner.keys(s) for s in ("a", "b")}
    queued = {s: await runner.store.enqueue(sk[s], f"run_{s}", "{}") for s in sk}
    await runner.store.enqueue(sk["a"], "run_a2", '{"n": 2}')
    a, b = await runner.claim("a"), await runner.claim("b")
    adv = {s: {"entry_id": queued[s].entry_id, "count": 16, "announce": None} for s in sk}
    done = (_e(1, "run.started"), _e(2, "run.completed"))
    bad = {**_body("a", a, *done, run_id="run_a"), "advance": {**adv["a"], "entry_id": "x"}}
    assert_problem(await client.post(URL, headers=ADMIN, json=bad), 422, "validation_error")
    one = {**_body("a", a, *done, run_id="run_a"), "advance": adv["a"]}
    r = await client.post(URL, headers=ADMIN, json=one)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["advance"][0][1] == "run_a2"  # the next head's run
    assert await streams.client.xlen(sk["a"].inbox) == 1
    stale = {**_body("b", b + 1, *done, run_id="run_b"), "advance": adv["b"]}
    fresh = {**_body("b", b, *done, run_id="run_b"), "advance": adv["b"]}
    r = await client.post(f"{URL}/batch", headers=ADMIN, json={"batches": [stale, fresh, one]})
    results = r.json()["results"]
    assert [x["status"] for x in results] == [409, 200, 200]
    assert results[1]["body"]["advance"][0] == []  # b's inbox is empty now
    assert results[2]["body"]["duplicates"] == 2  # a retried post: answered alike
    assert results[2]["body"]["advance"] == body["advance"]
    assert await streams.client.xlen(sk["b"].inbox) == 0
