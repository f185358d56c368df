"""Property-based fuzzing of the OpenAPI schema (schemathesis): no input ever gets a 5xx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from streamward.api.config import Settings
from streamward.api.main import create_app
from streamward.tools.server import RedisServer, free_port
from tests.api.helpers import ADMIN, ADMIN_TOKEN


@pytest.fixture(scope="module")
def api_url(redis_server: RedisServer) -> Iterator[str]:
    """The app on a real port, in a thread with its own event loop."""
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    app_settings = Settings(
        redis_url=redis_server.url,
        admin_token=ADMIN_TOKEN,
        start_timeout_s=0,  # detached invokes answer "queued" at once: no runner here
        tail_block_ms=50,
        max_body_bytes=64 * 1024,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# The schema the app serves at /openapi.json (built without Redis). Loaded eagerly because
# schemathesis's lazy ``from_fixture`` does not work with this pytest version.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure reproduces
)
def test_no_input_gets_a_server_error(case: Any, api_url: str) -> None:
    path = case.operation.path
    # keep every call finite: an attached invoke or a followed tail waits for a run that no
    # runner will ever start here (those modes are covered by the contract tests)
    if path.endswith("/invoke") and isinstance(case.body, dict):
        case.body["mode"] = "detached"
    if path.endswith("/events"):
        case.query = {**(case.query or {}), "follow": "false"}
    response = case.call(base_url=api_url, headers=ADMIN, timeout=20)
    case.validate_response(response, checks=[not_a_server_error])
    # every error is problem+json with a stable code
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), (
            response.status_code,
            response.text[:300],
        )
        assert isinstance(orjson.loads(response.content)["code"], str)
