"""Probes and the OpenAPI document."""

from __future__ import annotations

import httpx


async def test_livez_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_openapi_lists_every_endpoint(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert paths >= {
        ("POST", "/v1/sessions/{session_id}/invoke"),
        ("GET", "/v1/sessions/{session_id}/events"),
        ("POST", "/v1/sessions/{session_id}/detach"),
        ("POST", "/v1/sessions/{session_id}/cancel"),
        ("GET", "/v1/sessions/{session_id}/liveness"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/{session_id}"),
        ("DELETE", "/v1/sessions/{session_id}"),
        ("GET", "/v1/sessions/{session_id}/transcript"),
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("POST", "/admin/sessions/streams/heartbeat"),
        ("POST", "/admin/sessions/streams/detach"),
        ("POST", "/admin/sessions/transcripts/ingest"),
        ("GET", "/admin/locks"),
        ("GET", "/admin/locks/{session_id}"),
        ("POST", "/admin/locks/{session_id}/release"),
        ("GET", "/admin/replicas"),
        ("POST", "/admin/replicas/{replica_id}/drain"),
        ("GET", "/admin/projects/{project}/usage"),
    }
    assert (await client.get("/docs")).status_code == 200
