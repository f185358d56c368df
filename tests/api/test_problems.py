"""Errors are problem+json with stable codes: bad ids, bodies, limits, routes, Redis outages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from streamward.tools.server import RedisServer
from tests.api.conftest import SettingsFactory, asgi_client, live_server, running_app
from tests.api.helpers import ADMIN, assert_problem


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/sessions/a%20b/liveness"),
        ("GET", "/v1/sessions/" + "x" * 201),
        ("POST", "/v1/sessions/%C3%A9/invoke"),
        ("GET", "/v1/sessions/a*b/events"),
        ("DELETE", "/v1/sessions/a%7Bb%7D"),
    ],
)
async def test_bad_session_id_is_422_invalid_id(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = assert_problem(await client.request(method, path, json={}), 422, "invalid_id")
    assert body["errors"][0]["loc"] == ["path", "session_id"]


async def test_bad_ids_in_admin_paths_and_bodies(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/locks/s1", params={"project": "no/slash"}, headers=ADMIN)
    assert_problem(r, 422, "validation_error")
    r = await client.post("/admin/replicas/a%20b/drain", headers=ADMIN)
    assert_problem(r, 422, "invalid_id")
    hb = {"replica_id": "bad id", "incarnation": "i", "leases": []}
    r = await client.post("/admin/sessions/streams/heartbeat", headers=ADMIN, json=hb)
    assert_problem(r, 422, "validation_error")


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/sessions/s1/invoke",
        content=b'{"input": ',
        headers={"Content-Type": "application/json"},
    )
    body = assert_problem(r, 422, "malformed_json")
    assert body["errors"][0]["type"] == "json_invalid"


async def test_body_over_limit_is_413_by_content_length(
    make_settings: SettingsFactory, redis_client: object
) -> None:
    async with (
        running_app(make_settings(max_body_bytes=1000, start_timeout_s=0)) as app,
        asgi_client(app) as c,
    ):
        r = await c.post("/v1/sessions/s1/invoke", json={"input": "x" * 1000})
        assert_problem(r, 413, "body_too_large")
        ok = await c.post("/v1/sessions/s1/invoke", json={"input": "x" * 900, "mode": "detached"})
        assert ok.status_code == 202  # under the limit: accepted (queued)


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    yield b'{"input": "'
    for _ in range(n):
        yield b"x" * size
    yield b'"}'


async def test_body_over_limit_is_413_when_streamed_without_length(
    make_settings: SettingsFactory, redis_client: object
) -> None:
    # a real server and a chunked upload: no Content-Length to check up front
    async with (
        live_server(make_settings(max_body_bytes=10_000)) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        r = await c.post(
            "/admin/sessions/transcripts/ingest",
            content=_chunks(50, 1000),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert "content-length" not in r.request.headers
        assert_problem(r, 413, "body_too_large")
        r = await c.post(
            "/v1/sessions/s1/invoke",
            content=_chunks(50, 1000),
            headers={"Content-Type": "application/json"},
        )
        assert_problem(r, 413, "body_too_large")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v2/nothing"), 404, "not_found")
    assert_problem(await client.put("/v1/sessions/s1/invoke"), 405, "method_not_allowed")


async def test_redis_outage_is_503_with_retry_after_and_recovers(
    make_settings: SettingsFactory,
) -> None:
    server = RedisServer().start()
    try:
        settings = make_settings(redis_url=server.url, redis_socket_timeout_s=2, start_timeout_s=0)
        async with running_app(settings) as app, asgi_client(app) as c:
            assert (await c.get("/readyz")).status_code == 200
            r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
            assert r.status_code == 202
            server.stop()
            assert (await c.get("/livez")).status_code == 200  # no Redis check
            for method, path in [
                ("GET", "/readyz"),
                ("GET", "/v1/sessions/s1/liveness"),
                ("POST", "/v1/sessions/s1/invoke"),
                ("GET", "/v1/sessions"),
                ("GET", "/admin/replicas"),
            ]:
                r = await c.request(method, path, json={"mode": "detached"}, headers=ADMIN)
                code = "not_ready" if path == "/readyz" else "redis_unavailable"
                assert_problem(r, 503, code)
                assert int(r.headers["retry-after"]) >= 1
            server.start()  # an empty Redis: the scripts are reloaded on NOSCRIPT
            assert (await c.get("/readyz")).status_code == 200
            r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
            assert r.status_code == 202
            assert (await c.get("/v1/sessions/s1/liveness")).json()["pending"] == 1
    finally:
        server.cleanup()


async def test_app_starts_without_redis(make_settings: SettingsFactory) -> None:
    server = RedisServer()  # a free port nobody listens on
    settings = make_settings(redis_url=server.url)
    async with running_app(settings) as app, asgi_client(app) as c:
        assert (await c.get("/livez")).json() == {"status": "ok"}
        assert_problem(await c.get("/readyz"), 503, "not_ready")
    server.cleanup()
