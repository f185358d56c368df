"""Property-based fuzzing of the OpenAPI schema (schemathesis), every built-in check on:
no input ever gets a 5xx, every answer conforms to the documented status codes, content
types, schemas and Allow headers, and invalid input is refused. Then stateful: sequences
of calls following the links schemathesis infers between operations (bounded)."""

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
from schemathesis.specs.openapi.checks import (
    ensure_resource_availability,
    positive_data_acceptance,
)

from streamward.api.config import Settings
from streamward.api.main import create_app
from streamward.tools.server import RedisServer, free_port
from tests.api.helpers import ADMIN_TOKEN


@pytest.fixture(scope="module")
def api_url(redis_server: RedisServer) -> Iterator[str]:
    """The app on a real port, in a thread with its own event loop."""
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    app_settings = Settings(
        redis_url=redis_server.url,
        admin_token=ADMIN_TOKEN,
        # /v1 needs a token too, as the document's security requirements say (schemathesis
        # checks that a call without one is refused); the calls carry the admin token
        api_tokens={"fuzz-caller": "default"},
        start_timeout_s=0,  # detached invokes answer "queued" at once: no runner here
        tail_block_ms=50,
        # above what a schema-violating body (10,001 lease refs or entries) needs, so it
        # gets the 422 the contract promises rather than the body limit's 413
        max_body_bytes=4 * 1024 * 1024,
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


@schema.auth()
class _AdminToken:
    """Every call carries the admin token (all scopes), except the cases schemathesis
    generates without it on purpose: those must be refused (401), as the document says."""

    def get(self, case: Any, context: Any) -> str:
        return ADMIN_TOKEN

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _keep_finite(case: Any) -> None:
    """Keep every call finite: an attached invoke or a followed tail waits for a run that no
    runner will ever start here (those modes are covered by the contract tests)."""
    path = case.operation.path
    body = case.body
    # (an invalid mode is left as it is: the case must stay invalid)
    if (
        path.endswith("/invoke")
        and isinstance(body, dict)
        and body.get("mode", "stream") == "stream"
    ):
        body["mode"] = "detached"
    if path.endswith("/events") and case.method.upper() == "GET":
        case.query = {**(case.query or {}), "follow": "false"}


# 422s for rules a JSON schema cannot state (a JMESPath expression's syntax, a calendar
# date, seq continuity, one of two fields, Unicode a string may not hold): schema-valid,
# yet refused with their own codes (docs/api.md, Errors). Any other refusal of schema-valid
# data fails the run.
SEMANTIC_422 = {
    "invalid_expression",
    "invalid_route",
    "invalid_source",  # a verified source without a secret (none stored either)
    "missing_event_type",  # a github source without X-GitHub-Event
    "invalid_timestamp",
    "seq_gap",
    "invalid_json_value",
    # ids and cursors matching their documented pattern, yet past 2^64-1
    "invalid_log_id",
    "invalid_cursor",
    # GET /v1/sessions: filters only the record answers, on an API without one; and a
    # metadata filter that is a string but not a JSON object
    "record_not_configured",
    "invalid_metadata",
    # GET /v1/sessions: `route` and `route_id` naming different routes; a metadata.<key>
    # filter over its size or given twice
    "invalid_filter",
    # an invoke's callback: event names, the project's secret, the URL's scheme, shape and
    # addresses (docs/api.md#callbacks)
    "invalid_callback_event",
    "callback_not_configured",
    "invalid_callback_url",
    "callback_url_refused",
    "callback_url_unresolvable",
}


# a session that exists may have no saved state yet, a run no callback: these 404s name the
# missing part, not a missing session or run (the stateful check follows "created" links)
OPTIONAL_PARTS = {"state_not_found", "run_not_found"}


def _validate(case: Any, response: Any, **kwargs: Any) -> None:
    """Every built-in check (5xx, status codes, content types, schemas, Allow, negative and
    positive data), less positive-data acceptance for a semantic 422."""
    excluded: list[Any] = []
    if response.status_code == 422 and orjson.loads(response.content)["code"] in SEMANTIC_422:
        excluded.append(positive_data_acceptance)
    if response.status_code == 404 and orjson.loads(response.content)["code"] in OPTIONAL_PARTS:
        excluded.append(ensure_resource_availability)
    case.validate_response(response, excluded_checks=excluded, **kwargs)
    assert response.status_code < 500, (case.operation.label, response.text[:300])
    _assert_problem(response)


def _assert_problem(response: Any) -> None:
    # every error is problem+json with a stable code
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), (
            response.status_code,
            response.text[:300],
        )
        assert isinstance(orjson.loads(response.content)["code"], str)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure reproduces
)
def test_no_input_gets_a_server_error(case: Any, api_url: str) -> None:
    _keep_finite(case)
    response = case.call(base_url=api_url, timeout=20)
    _validate(case, response)


def test_stateful_sequences_get_no_server_error(api_url: str, redis_server: RedisServer) -> None:
    base = schema.as_state_machine()
    r = redis.Redis.from_url(redis_server.url)

    class Workflow(base):  # type: ignore[valid-type,misc]
        def setup(self) -> None:
            # every scenario starts from an empty store: which links can be followed depends
            # on earlier answers, and Hypothesis replays scenarios expecting the same ones
            r.flushall()
            r.close()

        def before_call(self, case: Any) -> None:
            _keep_finite(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": api_url, "timeout": 20}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            _validate(case, response, transport_kwargs=kwargs, recorder=self.recorder)

    Workflow.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
    )
