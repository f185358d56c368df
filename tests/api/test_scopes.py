"""Scoped tokens: every operation of the OpenAPI document by every scope, over real HTTP.

The operations come from ``app.openapi()["paths"]``, so an endpoint added later is covered
without touching this file: it fails when an operation declares no scope, or when what the
server enforces disagrees with what the operation declares.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from streamward.api.config import Settings
from streamward.api.main import create_app
from streamward.api.tokens import (
    ADMIN,
    PUBLIC,
    ROUTES_ADMIN,
    SCOPE_EXTENSION,
    SCOPES,
    SESSIONS_RUN,
    SESSIONS_VIEW,
    TokenSpec,
    token_digest,
)
from tests.api.conftest import SettingsFactory, live_server
from tests.api.helpers import assert_problem

PROJECT = "proj-s"
# one token per scope, all of PROJECT; the admin one is hashed too (not ADMIN_TOKEN)
TOKENS = {scope: f"tok-{scope.replace(':', '-')}" for scope in SCOPES}
PATH_VALUES = {
    "session_id": "s-scope",
    "replica_id": "r-scope",
    "route_id": "rt-scope",
    "source": "src-scope",
}
# streaming reads must answer and end, not follow
QUERY = {"/v1/sessions/{session_id}/events": {"follow": "false"}}


def specs(tokens: dict[str, str], project: str = PROJECT) -> list[TokenSpec]:
    return [
        TokenSpec(sha256=token_digest(t), project=project, scopes=(scope,), name=scope)  # type: ignore[arg-type]
        for scope, t in tokens.items()
    ]


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    doc = create_app(Settings()).openapi()
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method.upper() in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PATH_VALUES.get(m.group(1), "x-scope"), path)


def holds(granted: str, required: str) -> bool:
    return granted in (required, ADMIN)


@pytest.fixture
async def scoped_url(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> AsyncIterator[str]:
    settings = make_settings(admin_token=None, tokens=specs(TOKENS), start_timeout_s=0)
    async with live_server(settings) as url:
        yield url


async def call(
    c: httpx.AsyncClient, method: str, path: str, op: dict[str, Any], token: str | None
) -> tuple[int, str | None, str | None]:
    """Status, problem code and WWW-Authenticate of one call; a stream is left after its
    headers (whatever it would stream is not the point)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] | None = {} if "requestBody" in op else None
    url = concrete(path)
    async with c.stream(method, url, headers=headers, json=body, params=QUERY.get(path)) as r:
        code = None
        if r.headers.get("content-type", "").startswith("application/problem+json"):
            await r.aread()
            code = r.json().get("code")
        return r.status_code, code, r.headers.get("www-authenticate")


async def test_every_operation_declares_a_scope() -> None:
    ops = operations()
    assert len(ops) > 20
    for method, path, op in ops:
        scope = op.get(SCOPE_EXTENSION)
        assert scope in (*SCOPES, PUBLIC), f"{method} {path} declares no scope"
        if scope == PUBLIC:
            want: list[dict[str, list[str]]] = []
        elif scope == ADMIN:
            want = [{"adminBearer": [ADMIN]}]
        else:  # a project's token or the admin one: either works
            want = [{"userBearer": [scope]}, {"adminBearer": [scope]}]
        assert op.get("security") == want, (method, path)
    doc = create_app(Settings()).openapi()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"userBearer", "adminBearer"}
    assert all(s == {**s, "type": "http", "scheme": "bearer"} for s in schemes.values())


async def test_every_endpoint_by_every_scope(scoped_url: str) -> None:
    """Each operation, called with no token, a wrong one and a token of each scope, is
    refused exactly when the token lacks the scope the operation declares."""
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=scoped_url, timeout=10.0) as c:
        for method, path, op in operations():
            required = op[SCOPE_EXTENSION]
            what = f"{method} {path} ({required})"
            status, code, challenge = await call(c, method, path, op, None)
            if required == PUBLIC:
                if status in (401, 403):
                    wrong.append(f"{what}: public, yet {status} {code} without a token")
                continue
            if (status, code) != (401, "missing_token"):
                wrong.append(f"{what}: no token -> {status} {code}")
            elif challenge != f'Bearer scope="{required}"':
                wrong.append(f"{what}: challenge {challenge!r}")
            status, code, _ = await call(c, method, path, op, "not-a-token")
            if (status, code) != (403, "invalid_token"):
                wrong.append(f"{what}: unknown token -> {status} {code}")
            # refused scopes first: an allowed call may change what the others see
            for granted in sorted(TOKENS, key=lambda g: holds(g, required)):
                status, code, challenge = await call(c, method, path, op, TOKENS[granted])
                if holds(granted, required):
                    if status in (401, 403):
                        wrong.append(f"{what}: {granted} token refused: {status} {code}")
                elif (status, code) != (403, "insufficient_scope"):
                    wrong.append(f"{what}: {granted} token -> {status} {code}")
                elif challenge != f'Bearer error="insufficient_scope" scope="{required}"':
                    wrong.append(f"{what}: challenge {challenge!r}")
    assert not wrong, "\n".join(wrong)


async def test_view_only_token_reads_but_never_acts(scoped_url: str) -> None:
    view = {"Authorization": f"Bearer {TOKENS[SESSIONS_VIEW]}"}
    run = {"Authorization": f"Bearer {TOKENS[SESSIONS_RUN]}"}
    async with httpx.AsyncClient(base_url=scoped_url, timeout=10.0) as c:
        r = await c.post(
            "/v1/sessions/s1/invoke", json={"input": 1, "mode": "detached"}, headers=run
        )
        assert r.status_code == 202
        for path in [
            "/v1/sessions",
            "/v1/sessions/s1",
            "/v1/sessions/s1/liveness",
            "/v1/sessions/s1/transcript",
            "/v1/sessions/s1/events?follow=false",
        ]:
            r = await c.get(path, headers=view)
            assert r.status_code == 200, (path, r.text)
        # no state saved: the read is allowed, the answer is 404 state_not_found
        assert_problem(await c.get("/v1/sessions/s1/state", headers=view), 404, "state_not_found")
        acts = [
            ("POST", "/v1/sessions/s1/invoke", {"input": 1, "mode": "detached"}),
            ("POST", "/v1/sessions/s1/cancel", None),
            ("DELETE", "/v1/sessions/s1", None),
            ("PATCH", "/v1/sessions/s1", {"title": "t"}),
            ("POST", "/v1/sessions/s1/start", None),
            ("POST", "/v1/sessions/s1/stop", None),
        ]
        paths = create_app(Settings()).openapi()["paths"]
        for method, path, body in acts:
            template = path.replace("s1", "{session_id}")
            if method.lower() not in paths.get(template, {}):
                continue  # an endpoint this branch does not have yet (issue 16, part 2)
            r = await c.request(method, path, json=body, headers=view)
            assert_problem(r, 403, "insufficient_scope")
            assert r.json()["required_scope"] == SESSIONS_RUN
        # nothing the view token tried happened: the input still waits
        admin = {"Authorization": f"Bearer {TOKENS[ADMIN]}"}
        assert (await c.get("/v1/sessions/s1/liveness", headers=admin)).json()["pending"] == 1


async def test_rotation_two_tokens_then_one(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    """Both tokens of a project work side by side; once the old one is removed from the
    configuration it is refused, and the new one reaches the same sessions."""
    old, new = {SESSIONS_RUN: "old-secret"}, {SESSIONS_RUN: "new-secret"}
    both = specs(old) + specs(new)
    body: dict[str, Any] = {"input": 1, "mode": "detached"}
    url_cm = live_server(make_settings(tokens=both, start_timeout_s=0))
    async with url_cm as url, httpx.AsyncClient(base_url=url) as c:
        for t in ("old-secret", "new-secret"):
            auth = {"Authorization": f"Bearer {t}"}
            assert (await c.post("/v1/sessions/r1/invoke", json=body, headers=auth)).is_success
    url_cm = live_server(make_settings(tokens=specs(new), start_timeout_s=0))
    async with url_cm as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post(
            "/v1/sessions/r1/invoke", json=body, headers={"Authorization": "Bearer old-secret"}
        )
        assert_problem(r, 403, "invalid_token")
        r = await c.post(
            "/v1/sessions/r1/invoke", json=body, headers={"Authorization": "Bearer new-secret"}
        )
        assert r.status_code == 202
        # sessions:run alone does not read
        r = await c.get("/v1/sessions/r1", headers={"Authorization": "Bearer new-secret"})
        assert_problem(r, 403, "insufficient_scope")


async def test_routes_admin_token_manages_its_own_project_only(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    mine = {"Authorization": f"Bearer {TOKENS[ROUTES_ADMIN]}"}
    settings = make_settings(tokens=specs({ROUTES_ADMIN: TOKENS[ROUTES_ADMIN]}))
    route = {"route_id": "rt", "source": "gh", "on": ["push"], "session": {"key_expr": "k"}}
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/admin/routes", json={**route, "project": PROJECT}, headers=mine)
        assert r.status_code == 201, r.text
        r = await c.post("/admin/routes", json={**route, "project": "other"}, headers=mine)
        assert_problem(r, 403, "insufficient_scope")
        assert (await c.get("/admin/routes/rt", headers=mine)).json()["project"] == PROJECT
        r = await c.get("/admin/routes/rt", params={"project": "other"}, headers=mine)
        assert_problem(r, 403, "insufficient_scope")
        # the admin token sees every project's routes; this one its own
        admin = {"Authorization": "Bearer test-admin-token"}
        r = await c.post("/admin/routes", json={**route, "project": "other"}, headers=admin)
        assert r.status_code == 201
        assert len((await c.get("/admin/routes", headers=admin)).json()["items"]) == 2
        items = (await c.get("/admin/routes", headers=mine)).json()["items"]
        assert [i["project"] for i in items] == [PROJECT]
        r = await c.get("/admin/routes", params={"project": "other"}, headers=mine)
        assert_problem(r, 403, "insufficient_scope")
        r = await c.put("/admin/sources/gh", json={"kind": "generic"}, headers=mine)
        assert r.status_code == 201 and r.json()["project"] == PROJECT
        assert_problem(await c.get("/admin/replicas", headers=mine), 403, "insufficient_scope")
        assert_problem(await c.get("/v1/sessions", headers=mine), 403, "insufficient_scope")


async def test_admin_token_on_v1_and_runner_ingest(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    """A hashed admin token is the runners' token: it ingests; on /v1 it acts in its own
    project (admin implies every scope)."""
    admin = {"Authorization": f"Bearer {TOKENS[ADMIN]}"}
    settings = make_settings(admin_token=None, tokens=specs({ADMIN: TOKENS[ADMIN]}))
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url) as c:
        body = {
            "session_id": "s1",
            "project": PROJECT,
            "run_id": "run_x",
            "token": 1,
            "entries": [{"seq": 1, "type": "run.output", "data": {}}],
        }
        r = await c.post("/admin/sessions/transcripts/ingest", json=body, headers=admin)
        # fenced (nobody acquired s1): the token passed the guard, the epoch refused it
        assert_problem(r, 409, "stale_token")
        r = await c.get("/v1/sessions", headers=admin)
        assert r.status_code == 200


async def test_invoke_keeps_its_one_dependency() -> None:
    """Invoke keeps its one dependency (deps.state_and_session): the scope check lives in it,
    not in a dependency of its own (each resolved dependency costs the hottest path)."""
    create_app(Settings())  # declares the scopes on the routers' routes
    from streamward.api.routes.sessions import invoke_router

    (route,) = [r for r in invoke_router.routes if getattr(r, "path", "").endswith("/invoke")]
    dependant = route.dependant  # type: ignore[attr-defined]
    assert [d.call.__name__ for d in dependant.dependencies] == ["state_and_session"]
    assert route.openapi_extra[SCOPE_EXTENSION] == SESSIONS_RUN  # type: ignore[attr-defined]


async def test_concurrent_refusals_do_not_leak_other_answers(scoped_url: str) -> None:
    """Many refused and allowed calls at once each get their own answer."""
    view = {"Authorization": f"Bearer {TOKENS[SESSIONS_VIEW]}"}
    run = {"Authorization": f"Bearer {TOKENS[SESSIONS_RUN]}"}
    async with httpx.AsyncClient(base_url=scoped_url, timeout=10.0) as c:
        calls = [
            c.post(f"/v1/sessions/c{i}/invoke", json={"input": i, "mode": "detached"}, headers=h)
            for i in range(20)
            for h in (view, run)
        ]
        answers = await asyncio.gather(*calls)
    assert [r.status_code for r in answers] == [403, 202] * 20
