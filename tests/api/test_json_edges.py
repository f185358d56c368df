"""JSON at the edges: values that cannot be stored faithfully, ids past their range, non-JSON
bodies and over-cap inputs all get a 422 / 413 problem, never a 500 or a silent change."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from streamward.client import StreamwardClient
from streamward.core import jsonsafe
from streamward.lua.keys import Keys
from streamward.lua.streams import Streams
from streamward.runner.started import started_data
from streamward.tools.fleet import Fleet
from tests.api.conftest import SettingsFactory, asgi_client, live_server, running_app
from tests.api.helpers import ADMIN, RunnerSide, assert_problem

JSON = {"Content-Type": "application/json"}
U64_MAX = 2**64 - 1
INVOKE = "/v1/sessions/s1/invoke"


def _invoke_body(input_json: str) -> bytes:
    return b'{"mode": "detached", "input": ' + input_json.encode() + b"}"


@pytest.mark.parametrize(
    "input_json",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",  # json.loads makes it inf
        '{"a": [1, {"b": NaN}]}',
        '"\\ud800"',  # a lone high surrogate
        '"ok \\udfff"',  # a lone low surrogate
        '{"\\udc00": 1}',  # in an object key
        str(2**64),
        str(-(2**63) - 1),
        "[[[" + str(10**30) + "]]]",
    ],
)
async def test_unstorable_inputs_are_422_and_not_enqueued(
    client: httpx.AsyncClient, streams: Streams, runner: RunnerSide, input_json: str
) -> None:
    r = await client.post(INVOKE, content=_invoke_body(input_json), headers=JSON)
    body = assert_problem(r, 422, "invalid_json_value")
    assert body["errors"][0]["loc"][:2] == ["body", "input"]
    assert await streams.pending(runner.keys("s1")) == 0
    # the connection-keeping answer is a plain 422, not the 500 that closes keep-alive
    assert r.headers.get("connection") != "close"


@pytest.mark.parametrize("value", [U64_MAX, -(2**63), 2**53 + 1, 1.5e308, "é ✓ 😀"])
async def test_values_at_the_edges_are_kept_exactly(
    client: httpx.AsyncClient, runner: RunnerSide, no_start_wait: None, value: Any
) -> None:
    r = await client.post(INVOKE, content=_invoke_body(orjson.dumps(value).decode()), headers=JSON)
    assert r.status_code == 202, r.text
    [item] = await runner.wait_inbox("s1")
    assert item.input == value and type(item.input) is type(value)


async def test_every_free_form_body_is_checked(
    client: httpx.AsyncClient, runner: RunnerSide, no_start_wait: None
) -> None:
    r = await client.post("/v1/events/src", content=b'{"type": "t", "payload": NaN}', headers=JSON)
    assert_problem(r, 422, "invalid_json_value")
    r = await client.post(
        "/v1/events/src", content=b'{"type": "\\ud800", "payload": 1}', headers=JSON
    )
    assert_problem(r, 422, "invalid_json_value")
    raw = b'{"mode": "detached", "input": 1, "idempotency_key": "k\\ud800"}'
    assert_problem(await client.post(INVOKE, content=raw, headers=JSON), 422, "invalid_json_value")
    # the runners' ingest: entry data and free strings
    token = await runner.claim("s1")
    for entry_data in (b"Infinity", str(2**70).encode(), b'"\\udbff"'):
        raw = (
            b'{"session_id": "s1", "run_id": "r1", "token": %d, "entries": '
            b'[{"seq": 1, "type": "run.started", "data": %s}]}' % (token, entry_data)
        )
        r = await client.post(
            "/admin/sessions/transcripts/ingest", content=raw, headers={**ADMIN, **JSON}
        )
        assert_problem(r, 422, "invalid_json_value")
    hb = b'{"replica_id": "r", "incarnation": "\\ud800", "leases": []}'
    r = await client.post(
        "/admin/sessions/streams/heartbeat", content=hb, headers={**ADMIN, **JSON}
    )
    assert_problem(r, 422, "invalid_json_value")
    route = (
        b'{"route_id": "r1", "source": "src", "on": ["t"], "filter": "a == \'\\ud800\'", '
        b'"session": {"key_expr": "k"}}'
    )
    r = await client.post("/admin/routes", content=route, headers={**ADMIN, **JSON})
    assert_problem(r, 422, "invalid_json_value")
    r = await client.post(
        "/v1/sessions/s1/detach", content=b'{"connection_id": "\\udfff"}', headers=JSON
    )
    assert_problem(r, 422, "invalid_json_value")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"input": "\xc3"}',  # a truncated UTF-8 sequence
        b"[" * 100_000 + b"]" * 100_000,  # nesting past the parser's recursion limit
        b"{",
        b"",
    ],
)
async def test_non_json_bodies_are_422_malformed_json(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    r = await client.post(INVOKE, content=raw, headers=JSON)
    if raw == b"":  # no body at all: a required body is missing, not malformed
        assert_problem(r, 422, "validation_error")
    else:
        assert_problem(r, 422, "malformed_json")


async def test_an_integer_of_thousands_of_digits_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(INVOKE, content=_invoke_body("9" * 5000), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["code"] in ("malformed_json", "invalid_json_value")


# -- ids and cursors past 2^64-1 -----------------------------------------------------------

TOO_BIG = str(U64_MAX + 1)
TWENTY_NINES = "9" * 20  # matches the id patterns' 20 digits, yet is past 2^64-1


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/sessions", {"cursor": TOO_BIG}, "invalid_cursor"),
        ("/v1/sessions", {"cursor": TWENTY_NINES}, "invalid_cursor"),
        ("/admin/locks", {"cursor": TWENTY_NINES}, "invalid_cursor"),
        ("/v1/sessions/s1/transcript", {"after": TOO_BIG}, "invalid_log_id"),
        ("/v1/sessions/s1/transcript", {"after": f"1-{TWENTY_NINES}"}, "invalid_log_id"),
        ("/v1/sessions/s1/events", {"after": TWENTY_NINES, "follow": "false"}, "invalid_log_id"),
    ],
)
async def test_cursors_past_u64_are_422(
    client: httpx.AsyncClient,
    no_start_wait: None,
    path: str,
    params: dict[str, str],
    code: str,
) -> None:
    assert (await client.post(INVOKE, json={"mode": "detached"})).status_code == 202
    r = await client.get(path, params=params, headers=ADMIN)
    assert_problem(r, 422, code)


async def test_cursors_at_u64_max_are_served(
    client: httpx.AsyncClient, no_start_wait: None
) -> None:
    assert (await client.post(INVOKE, json={"mode": "detached"})).status_code == 202
    r = await client.get("/v1/sessions/s1/transcript", params={"after": f"{U64_MAX}-{U64_MAX}"})
    assert r.status_code == 200 and r.json()["items"] == []
    r = await client.get("/v1/sessions/s1/events", params={"after": str(U64_MAX), "follow": "0"})
    assert r.status_code == 200 and r.text == ""


async def test_last_event_id_past_u64_is_422_before_the_stream_starts(
    make_settings: SettingsFactory, redis_client: object
) -> None:
    # on a real server: the answer is a whole problem, not a chunked stream torn mid-way
    async with live_server(make_settings(start_timeout_s=0)) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}{INVOKE}", json={"mode": "detached"})
        assert r.status_code == 202
        for header in (TWENTY_NINES, f"5-{TOO_BIG}", "-1", "abc"):
            r = await c.get(
                f"{url}/v1/sessions/s1/events",
                headers={"Last-Event-ID": header, "Accept": "text/event-stream"},
            )
            assert_problem(r, 422, "invalid_log_id")
            assert "transfer-encoding" not in r.headers
        # the connection is still usable after each refusal
        assert (await c.get(f"{url}/livez")).status_code == 200


@pytest.mark.parametrize("field", ["seq", "token"])
async def test_ingest_seq_and_token_past_their_range_are_422(
    client: httpx.AsyncClient, runner: RunnerSide, field: str
) -> None:
    token = await runner.claim("s1")
    body: dict[str, Any] = {
        "session_id": "s1",
        "run_id": "r1",
        "token": token,
        "entries": [{"seq": 1, "type": "run.started", "data": None}],
    }
    for big in (U64_MAX + 1, 2**53):  # past what a Lua number (a double) holds exactly
        if field == "seq":
            body["entries"][0]["seq"] = big
        else:
            body["token"] = big
        r = await client.post("/admin/sessions/transcripts/ingest", json=body, headers=ADMIN)
        assert_problem(r, 422, "validation_error")


async def test_lease_tokens_past_their_range_are_422(client: httpx.AsyncClient) -> None:
    lease = {"session_id": "s1", "token": U64_MAX + 1}
    hb = {"replica_id": "r", "incarnation": "i", "leases": [lease]}
    r = await client.post("/admin/sessions/streams/heartbeat", json=hb, headers=ADMIN)
    assert_problem(r, 422, "validation_error")
    detach = {"replica_id": "r", "incarnation": "i", "session_id": "s1", "token": U64_MAX + 1}
    r = await client.post("/admin/sessions/streams/detach", json=detach, headers=ADMIN)
    assert_problem(r, 422, "validation_error")


# -- the input cap ---------------------------------------------------------------------------


async def test_inputs_over_the_cap_are_413_and_not_enqueued(
    make_settings: SettingsFactory, redis_client: object, streams: Streams, keys: Keys
) -> None:
    async with (
        running_app(make_settings(max_input_bytes=1000, start_timeout_s=0)) as app,
        asgi_client(app) as c,
    ):
        r = await c.post(INVOKE, json={"mode": "detached", "input": "x" * 998})  # 1000 as JSON
        assert r.status_code == 202, r.text
        r = await c.post(INVOKE, json={"mode": "detached", "input": "x" * 999})
        body = assert_problem(r, 413, "input_too_large")
        assert (body["bytes"], body["max_bytes"]) == (1001, 1000)
        assert await streams.pending(keys.session("default", "s1")) == 1


def test_default_cap_is_256_kib(make_settings: SettingsFactory) -> None:
    assert make_settings().max_input_bytes == 256 * 1024


def test_large_inputs_with_a_real_runner_name_their_owner(fleet: Fleet) -> None:
    """The issue's case: a 1 MiB input answered 202 with ``owner.replica_id: ""`` because its
    ``run.started`` (which copied the input) was truncated. With the default cap it is 413;
    just under the cap, and with a cap raised past 1 MiB, the owner is named."""
    api = fleet.start_api()
    big_api = fleet.start_api(
        env={"STREAMWARD_MAX_INPUT_BYTES": str(2 << 20), "STREAMWARD_MAX_BODY_BYTES": str(4 << 20)}
    )
    fleet.start_runner("runner-a")
    under_cap = {"text": "hi", "chunks": 1, "pad": "x" * (256 * 1024 - 100)}
    mib = {"text": "hi", "chunks": 1, "pad": "x" * (1 << 20)}
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{api.url}/v1/sessions/over/invoke", json={"mode": "detached", "input": mib})
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"
        over = {"text": "hi", "pad": "x" * (256 * 1024)}
        r = http.post(
            f"{api.url}/v1/sessions/over/invoke", json={"mode": "detached", "input": over}
        )
        assert r.status_code == 413 and r.json()["code"] == "input_too_large", r.text
    for url, session, value in ((api.url, "under", under_cap), (big_api.url, "mib", mib)):
        with StreamwardClient(url, admin_token=fleet.admin_token) as client:
            accepted = client.invoke(session, value)
            assert accepted.status == "running", accepted
            assert accepted.owner is not None and accepted.owner.replica_id == "runner-a"
            entries = client.invoke(session, {"text": "next"}, detached=False)
            assert entries[-1].type == "run.completed"
            log = client.transcript(session).items
            started = log[0]
            assert started.type == "run.started" and started.data["replica_id"] == "runner-a"
            assert started.data["input_truncated"] is True and started.data["input"] is None
            assert started.data["input_bytes"] == len(orjson.dumps(value))
            # the handler got the whole input: its run completed with the echoed text
            first_run = [e for e in log if e.run_id == accepted.run_id]
            assert [e.type for e in first_run] == ["run.started", "run.output", "run.completed"]
            assert first_run[1].data == {"text": "hi", "i": 0}


# -- units -----------------------------------------------------------------------------------


def test_jsonsafe_check_names_the_path() -> None:
    with pytest.raises(jsonsafe.UnsafeJSON) as info:
        jsonsafe.check({"a": [1, {"b": float("nan")}]})
    assert info.value.path == ".a[1].b"
    assert jsonsafe.check({"deep": [[[[U64_MAX]]]], "t": True}) == {
        "deep": [[[[U64_MAX]]]],
        "t": True,
    }
    deep: Any = 0
    for _ in range(100_000):  # no recursion: deeper than any recursion limit
        deep = [deep]
    assert jsonsafe.check(deep) is deep


def test_started_data_copies_only_small_inputs() -> None:
    small = started_data("r1", 2, {"q": "x" * 10}, 100)
    assert small == {"replica_id": "r1", "attempt": 2, "input": {"q": "x" * 10}}
    big = started_data("r1", 1, {"q": "x" * 200}, 100)
    assert big == {
        "replica_id": "r1",
        "attempt": 1,
        "input": None,
        "input_truncated": True,
        "input_bytes": len(orjson.dumps({"q": "x" * 200})),
    }
    assert started_data("r1", 1, 12345, 0)["input"] == 12345
