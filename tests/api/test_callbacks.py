"""Signed completion callbacks: the real app on real Redis, a real HTTP receiver (a thread),
the runner's side played through the real admin ingest."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from streamward.api.callbacks import sign
from streamward.api.schemas import CallbackSpec
from streamward.api.urlguard import AllowList, refused_reason
from streamward.client import AsyncStreamwardClient
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, RunnerSide, assert_problem, wait_for
from tests.api.receiver import Receiver, verify

SECRET = "s3cret-default"
FAST: dict[str, Any] = {
    "callback_secrets": {"default": SECRET, "pa": "secret-a"},
    "callback_allow": ["127.0.0.1/32"],
    "callback_poll_s": 0.05,
    "callback_retry_base_s": 0.05,
    "callback_retry_max_s": 0.2,
    "callback_timeout_s": 2.0,
    "start_timeout_s": 0,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=3).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def cb_app(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> AsyncIterator[FastAPI]:
    async with running_app(make_settings(**FAST)) as app:
        yield app


@pytest.fixture
async def cb_client(cb_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(cb_app) as c:
        yield c


@pytest.fixture
async def side(cb_client: httpx.AsyncClient, store: LeaseStore, streams: Streams) -> RunnerSide:
    s = RunnerSide(cb_client, store, streams, "replica-a")
    await s.register()
    return s


async def _invoke(client: httpx.AsyncClient, callback: dict[str, Any], sid: str = "s1") -> str:
    r = await client.post(
        f"/v1/sessions/{sid}/invoke",
        json={"input": "hi", "mode": "detached", "callback": callback},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


async def _deliveries(client: httpx.AsyncClient, run_id: str, **kw: Any) -> dict[str, Any]:
    r = await client.get(f"/v1/runs/{run_id}/deliveries", **kw)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_fails_three_times_then_delivered_once_signed(
    cb_client: httpx.AsyncClient, side: RunnerSide, receiver: Receiver
) -> None:
    run_id = await _invoke(cb_client, {"url": receiver.url})
    await side.claim("s1")
    await side.start("s1", run_id)
    await side.finish("s1", run_id, "out")

    async def delivered() -> bool:
        return len(receiver.successes()) == 1

    await wait_for(delivered, "the fourth attempt to succeed")
    [ok] = receiver.successes()
    assert receiver.attempts(ok.delivery_id) == 4  # 3 x 500, then 200
    assert verify(SECRET, ok.headers["X-Streamward-Signature"], ok.body)
    assert not verify("another-secret", ok.headers["X-Streamward-Signature"], ok.body)
    assert ok.headers["X-Streamward-Timestamp"] in ok.headers["X-Streamward-Signature"]
    assert ok.headers["X-Streamward-Event"] == "run.completed"
    body = orjson.loads(ok.body)
    assert body["delivery_id"] == ok.delivery_id
    assert body["event"] == "run.completed" and body["entry"]["seq"] == 3
    assert body["entry"]["data"] == {"outputs": 1}
    assert body["run"]["run_id"] == run_id and body["run"]["status"] == "completed"
    assert body["run"]["session_id"] == "s1" and body["run"]["project"] == "default"

    async def recorded() -> bool:
        got = await _deliveries(cb_client, run_id)
        return bool(got["items"] and got["items"][0]["state"] == "delivered")

    await wait_for(recorded, "the record to say delivered")
    got = await _deliveries(cb_client, run_id)
    [item] = got["items"]
    assert item["delivery_id"] == ok.delivery_id and item["attempts"] == 4
    assert [a["status_code"] for a in item["attempt_log"]] == [500, 500, 500, 200]
    assert item["next_retry_at"] is None and item["delivered_at"]
    assert got["events"] == ["run.completed", "run.failed", "run.cancelled", "run.merged"]
    # no more attempts after delivery (the outbox is empty)
    metrics = (await cb_client.get("/metrics")).text
    assert "streamward_callback_outbox_depth 0.0" in metrics
    assert 'streamward_api_callback_attempts_total{outcome="delivered"} 1.0' in metrics
    assert 'streamward_api_callback_attempts_total{outcome="failed"} 3.0' in metrics


async def test_named_events_only_and_duplicate_ingest_is_one_delivery(
    cb_client: httpx.AsyncClient, side: RunnerSide, receiver: Receiver, store: LeaseStore
) -> None:
    receiver.fail_first = 0
    run_id = await _invoke(cb_client, {"url": receiver.url, "events": ["run.started"]})
    token = await side.claim("s1")
    started = {"seq": 1, "type": "run.started", "data": {"replica_id": "replica-a"}}
    batch = {"session_id": "s1", "run_id": run_id, "token": token, "entries": [started]}
    for _ in range(3):  # the runner's retries: the same entry ingested again
        r = await cb_client.post("/admin/sessions/transcripts/ingest", headers=ADMIN, json=batch)
        assert r.status_code == 200, r.text
    side.seq["default/s1"] = 1
    await side.finish("s1", run_id)  # run.completed: not named, no delivery

    async def one() -> bool:
        return len(receiver.successes()) == 1

    await wait_for(one, "the run.started delivery")
    got = await _deliveries(cb_client, run_id)
    assert [i["event"] for i in got["items"]] == ["run.started"]
    assert await store.client.zcard(Keys().callbacks_due) == 0
    assert receiver.attempts() == 1


async def test_python_client_passes_the_callback_and_reads_deliveries(
    cb_app: FastAPI, side: RunnerSide, receiver: Receiver
) -> None:
    receiver.fail_first = 0
    transport = httpx.ASGITransport(app=cb_app)
    async with AsyncStreamwardClient("http://api", transport=transport) as client:
        spec = CallbackSpec(url=receiver.url, events=["run.completed"])
        accepted = await client.invoke("s1", "hi", callback=spec)
        await side.claim("s1")
        await side.start("s1", accepted.run_id)
        await side.finish("s1", accepted.run_id)

        async def delivered() -> bool:
            got = await client.deliveries(accepted.run_id)
            return bool(got.items and got.items[0].state == "delivered")

        await wait_for(delivered, "the delivery via the client")
        got = await client.deliveries(accepted.run_id)
        assert got.events == ["run.completed"] and got.items[0].attempts == 1


async def test_a_redirect_is_a_failed_attempt_not_followed(
    cb_client: httpx.AsyncClient, side: RunnerSide, receiver: Receiver
) -> None:
    receiver.redirect = True
    run_id = await _invoke(cb_client, {"url": receiver.url})
    await side.claim("s1")
    await side.start("s1", run_id)
    await side.finish("s1", run_id)

    async def two() -> bool:
        items = (await _deliveries(cb_client, run_id))["items"]
        return bool(items and items[0]["attempts"] >= 2)

    await wait_for(two, "two redirected attempts")
    item = (await _deliveries(cb_client, run_id))["items"][0]
    assert item["state"] == "pending"
    assert {(a["status_code"], a["error"]) for a in item["attempt_log"]} == {(302, "HTTP 302")}
    # one request per recorded attempt: the Location was never requested
    assert receiver.attempts() in (item["attempts"], item["attempts"] + 1)


async def test_a_delete_ending_the_run_is_delivered(
    cb_client: httpx.AsyncClient, side: RunnerSide, receiver: Receiver
) -> None:
    receiver.fail_first = 0
    run_id = await _invoke(cb_client, {"url": receiver.url})
    await side.claim("s1")
    await side.start("s1", run_id)
    assert (await cb_client.delete("/v1/sessions/s1")).status_code == 200

    async def one() -> bool:
        return len(receiver.successes()) == 1

    await wait_for(one, "the run.cancelled delivery")
    body = orjson.loads(receiver.successes()[0].body)
    assert body["event"] == "run.cancelled" and body["entry"]["data"] == {"reason": "deleted"}
    assert body["run"]["status"] == "cancelled"


async def test_dead_after_the_retry_window(
    make_settings: SettingsFactory,
    redis_client: aioredis.Redis,
    store: LeaseStore,
    streams: Streams,
    receiver: Receiver,
) -> None:
    receiver.always_fail = True
    settings = make_settings(**{**FAST, "callback_retry_window_s": 0.5})
    async with running_app(settings) as app, asgi_client(app) as client:
        side = RunnerSide(client, store, streams, "replica-a")
        await side.register()
        run_id = await _invoke(client, {"url": receiver.url})
        await side.claim("s1")
        await side.start("s1", run_id)
        await side.finish("s1", run_id)

        async def dead() -> bool:
            items = (await _deliveries(client, run_id))["items"]
            return bool(items and items[0]["state"] == "dead")

        await wait_for(dead, "the delivery to be dead")
        [item] = (await _deliveries(client, run_id))["items"]
        assert item["dead_at"] and item["next_retry_at"] is None
        assert item["attempts"] >= 2 and all(a["status_code"] == 500 for a in item["attempt_log"])
        seen = receiver.attempts()
        assert seen == item["attempts"]
        assert "streamward_api_callback_dead_total 1.0" in (await client.get("/metrics")).text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/x",
        "http://[fd00:ec2::254]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://0.0.0.0/x",
        "http://localhost/x",  # a host name resolving to loopback
    ],
)
async def test_ssrf_guard_refuses_private_addresses(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, streams: Streams, url: str
) -> None:
    settings = make_settings(**{**FAST, "callback_allow": []})
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post(
            "/v1/sessions/s1/invoke",
            json={"input": 1, "mode": "detached", "callback": {"url": url}},
        )
        assert_problem(r, 422, "callback_url_refused")
        assert await streams.meta(Keys().session("default", "s1")) == {}  # nothing enqueued


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        (["127.0.0.0/8"], "http://127.0.0.1:9/x"),
        (["localhost"], "http://localhost:9/x"),
        (["10.0.0.0/8"], "http://10.1.2.3/x"),
    ],
)
async def test_allow_list_permits(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, allow: list[str], url: str
) -> None:
    settings = make_settings(**{**FAST, "callback_allow": allow})
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post(
            "/v1/sessions/s1/invoke",
            json={"input": 1, "mode": "detached", "callback": {"url": url}},
        )
        assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("callback", "code"),
    [
        ({"url": "ftp://example.com/x"}, "callback_url_refused"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "invalid_callback_url"),
        ({"url": "http:///x"}, "invalid_callback_url"),
        ({"url": "http://no-such-host.invalid/x"}, "callback_url_unresolvable"),
        ({"url": "http://127.0.0.1/x", "events": ["run.output"]}, "invalid_callback_event"),
        ({"url": "http://127.0.0.1/x", "events": ["nope"]}, "invalid_callback_event"),
    ],
)
async def test_bad_callbacks_are_422_with_a_stable_code(
    cb_client: httpx.AsyncClient, callback: dict[str, Any], code: str
) -> None:
    r = await cb_client.post("/v1/sessions/s1/invoke", json={"input": 1, "callback": callback})
    assert_problem(r, 422, code)


async def test_project_without_secret_is_refused(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(**{**FAST, "callback_secrets": {}})
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post(
            "/v1/sessions/s1/invoke", json={"input": 1, "callback": {"url": "http://127.0.0.1/"}}
        )
        assert_problem(r, 422, "callback_not_configured")


async def test_deliveries_are_project_scoped(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, receiver: Receiver
) -> None:
    settings = make_settings(**{**FAST, "api_tokens": {"tok-a": "pa", "tok-b": "pb"}})
    a = {"Authorization": "Bearer tok-a"}
    b = {"Authorization": "Bearer tok-b"}
    async with running_app(settings) as app, asgi_client(app) as client:
        r = await client.post(
            "/v1/sessions/s1/invoke",
            headers=a,
            json={"input": 1, "mode": "detached", "callback": {"url": receiver.url}},
        )
        run_id = r.json()["run_id"]
        got = await _deliveries(client, run_id, headers=a)
        assert got["items"] == [] and got["session_id"] == "s1"
        assert_problem(
            await client.get(f"/v1/runs/{run_id}/deliveries", headers=b), 404, "run_not_found"
        )
        assert_problem(
            await client.get("/v1/runs/run_unknown/deliveries", headers=a), 404, "run_not_found"
        )
        assert_problem(await client.get("/v1/runs/a%20b/deliveries", headers=a), 422, "invalid_id")


async def test_address_checked_again_at_delivery(
    cb_app: FastAPI, cb_client: httpx.AsyncClient, side: RunnerSide, receiver: Receiver
) -> None:
    """Allowed at invoke, refused when sent (as a name re-resolving elsewhere would be)."""
    receiver.fail_first = 0
    run_id = await _invoke(cb_client, {"url": receiver.url})
    cb_app.state.sw.settings.callback_allow = []  # the address is no longer allowed
    await side.claim("s1")
    await side.start("s1", run_id)
    await side.finish("s1", run_id)

    async def refused() -> bool:
        items = (await _deliveries(cb_client, run_id))["items"]
        return bool(items and items[0]["attempts"] >= 2)

    await wait_for(refused, "refused attempts")
    item = (await _deliveries(cb_client, run_id))["items"][0]
    assert item["state"] == "pending"
    assert all(
        a["status_code"] is None and a["error"].startswith("callback_url_refused")
        for a in item["attempt_log"]
    )
    assert receiver.attempts() == 0


# -- pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.100.100.200", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:0a00:0001::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ],
)
def test_refused_reason(addr: str, reason: str | None) -> None:
    assert refused_reason(ipaddress.ip_address(addr), AllowList()) == reason


def test_allow_list_and_signature_format() -> None:
    allow = AllowList.parse(["10.0.0.0/8", " Hooks.Internal. ", ""])
    assert refused_reason(ipaddress.ip_address("10.9.9.9"), allow) is None
    assert refused_reason(ipaddress.ip_address("11.0.0.1"), allow) is None  # public anyway
    assert allow.hosts == frozenset({"hooks.internal"})
    header = sign(["new", "old"], 1700000000, b'{"a":1}')
    t, v1, v1b = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and v1b.startswith("v1=")
