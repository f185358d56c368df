"""Bearer tokens bound to projects: 401/403, and no caller ever sees another project's session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import assert_problem

A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


@pytest.fixture
async def authed(
    make_settings: SettingsFactory, redis_client: object
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(api_tokens={"tok-a": "proj-a", "tok-b": "proj-b"}, start_timeout_s=0)
    async with running_app(settings) as app, asgi_client(app) as c:
        yield c


async def test_missing_and_wrong_tokens(authed: httpx.AsyncClient) -> None:
    r = await authed.get("/v1/sessions")
    assert_problem(r, 401, "missing_token")
    assert r.headers["www-authenticate"] == 'Bearer scope="sessions:view"'
    r = await authed.get("/v1/sessions", headers={"Authorization": "Bearer tok-c"})
    assert_problem(r, 403, "invalid_token")
    r = await authed.post("/v1/sessions/s1/invoke", json={"mode": "detached"})
    assert_problem(r, 401, "missing_token")
    # probes stay open for kubelets
    assert (await authed.get("/livez")).status_code == 200
    assert (await authed.get("/readyz")).status_code == 200


async def test_projects_are_isolated(authed: httpx.AsyncClient) -> None:
    r = await authed.post("/v1/sessions/s1/invoke", json={"mode": "detached"}, headers=A)
    assert r.status_code == 202
    run_id = r.json()["run_id"]
    for method, path in [
        ("GET", "/v1/sessions/s1"),
        ("GET", "/v1/sessions/s1/liveness"),
        ("GET", "/v1/sessions/s1/events?follow=false"),
        ("GET", "/v1/sessions/s1/transcript"),
        ("POST", "/v1/sessions/s1/cancel"),
        ("POST", "/v1/sessions/s1/detach"),
        ("DELETE", "/v1/sessions/s1"),
    ]:
        assert_problem(await authed.request(method, path, headers=B), 404, "session_not_found")
    assert (await authed.get("/v1/sessions", headers=B)).json()["items"] == []
    mine = (await authed.get("/v1/sessions", headers=A)).json()["items"]
    assert [(s["session_id"], s["project"]) for s in mine] == [("s1", "proj-a")]
    # the same id in another project is another session
    r = await authed.post("/v1/sessions/s1/invoke", json={"mode": "detached"}, headers=B)
    assert r.json()["run_id"] != run_id
    assert (await authed.get("/v1/sessions/s1/liveness", headers=A)).json()["pending"] == 1
    assert (await authed.get("/v1/sessions/s1/liveness", headers=B)).json()["pending"] == 1


async def test_admin_disabled_without_server_token(
    make_settings: SettingsFactory, redis_client: object
) -> None:
    async with running_app(make_settings(admin_token=None)) as app, asgi_client(app) as c:
        r = await c.get("/admin/replicas", headers={"Authorization": "Bearer anything"})
        assert_problem(r, 403, "admin_disabled")
        assert_problem(await c.get("/admin/replicas"), 401, "missing_token")


async def test_no_tokens_configured_means_project_default(
    no_start_wait: None, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/v1/sessions/s1/invoke",
        json={"mode": "detached"},
        headers={"Authorization": "Bearer whatever"},
    )
    assert r.status_code == 202
    items = (await client.get("/v1/sessions")).json()["items"]
    assert [s["project"] for s in items] == ["default"]
