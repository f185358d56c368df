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


async def test_docs_pages_need_no_token_nor_a_cdn(client: httpx.AsyncClient) -> None:
    """/docs and /redoc load their assets from this server (FastAPI's defaults: a CDN), with
    no token, behind a same-origin CSP; none of them is an operation of the document."""
    doc = (await client.get("/openapi.json")).json()
    assert not [p for p in doc["paths"] if p.startswith(("/docs", "/redoc"))]
    for page, assets in [
        ("/docs", ["/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"]),
        ("/redoc", ["/docs/assets/redoc.standalone.js"]),
    ]:
        r = await client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "cdn." not in r.text and "googleapis" not in r.text, page
        assert "default-src 'self'" in r.headers["content-security-policy"]
        for asset in assets:
            assert f'"{asset}"' in r.text, (page, asset)
            a = await client.get(asset)
            assert a.status_code == 200 and len(a.content) > 10_000, asset
    assert "validatorUrl" in (await client.get("/docs")).text  # the badge's call is off
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200
