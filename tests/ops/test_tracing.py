"""End-to-end tracing across real processes: an API process and a runner process export to an
OTLP/HTTP receiver this test runs; one invoke is one trace, its spans linked across both.
And with tracing off: nothing is exported, no SDK is loaded, the logs still line up."""

from __future__ import annotations

import io
import json
import logging
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from streamward.core import logs, tracing
from streamward.tools.fleet import Fleet, Proc
from tests.ops.conftest import wait_until
from tests.ops.otlp_receiver import Receiver, Span

SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP SpanKind values


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _start(fleet: Fleet, env: dict[str, str]) -> Proc:
    fleet.env.update({"STREAMWARD_LOG_LEVEL": "info", **env})
    api = fleet.start_api()
    fleet.start_runner("r1", api_url=api.url)
    return api


def _one(spans: list[Span], name: str) -> Span:
    got = [s for s in spans if s.name == name]
    assert len(got) == 1, (name, spans)
    return got[0]


def _complete(receiver: Receiver, trace_id: str) -> Callable[[], bool]:
    def done() -> bool:
        spans = receiver.trace(trace_id)
        runs = [s for s in spans if s.name == "run"]
        ended = bool(runs) and "streamward.run.outcome" in runs[0].attributes
        # the runner's other spans ended before its run span; the API's invoke and first
        # ingest before the run did
        names = {s.name for s in spans}
        return ended and {"invoke", "ingest"} <= names and _consumed(spans) is not None

    return done


def _consumed(spans: list[Span]) -> Span | None:
    """The span in which the run's input was consumed: the API's ingest of the run's last
    entries (ingestAdvance), or the runner's own advanceInbox / completeInput (when it was
    already draining: a SIGTERM right after the stream ended can come before it)."""
    for s in spans:
        if s.name == "ingest" and "streamward.ingest.advance" in s.attributes:
            return s
    return next((s for s in spans if s.name in ("advanceInbox", "completeInput")), None)


def _check_trace(
    spans: list[Span], caller_span_id: str | None, mode: str, outcome: str = "completed"
) -> None:
    """invoke (API) -> run (runner) -> ship (runner) -> ingest (API); the input consumed by
    the last ingest (ingestAdvance) or by an advanceInbox / completeInput under run."""
    invoke, run = _one(spans, "invoke"), _one(spans, "run")
    assert invoke.service == "streamward-api" and invoke.kind == SERVER
    assert invoke.parent_span_id == (caller_span_id or "")
    assert invoke.attributes["streamward.invoke.mode"] == mode
    assert invoke.attributes["streamward.session.id"] == "s1"
    assert run.service == "streamward-runner" and run.kind == CONSUMER
    assert run.parent_span_id == invoke.span_id
    assert run.attributes["streamward.run.id"] == invoke.attributes["streamward.run.id"]
    assert run.attributes["streamward.run.outcome"] == outcome
    assert run.attributes["streamward.replica.id"] == "r1"
    done = _consumed(spans)
    assert done is not None
    if done.name == "ingest":  # consumed by the API, after the run's last entries
        assert done.attributes["streamward.ingest.advance"]
        assert done.attributes["streamward.ingest.last_seq"] == max(
            s.attributes["streamward.ingest.last_seq"] for s in spans if s.name == "ingest"
        )
    else:
        assert done.service == "streamward-runner" and done.parent_span_id == run.span_id
        assert done.attributes["db.system.name"] == "redis"
    consumed = {done.name} - {"ingest"}
    ships = {s.span_id: s for s in spans if s.name == "ship"}
    ingests = [s for s in spans if s.name == "ingest"]
    assert ships and ingests
    for ship in ships.values():
        assert ship.service == "streamward-runner" and ship.kind == CLIENT
        assert ship.parent_span_id == run.span_id
    # every ingest the API received joined the runner's ship span that sent it
    for ingest in ingests:
        assert ingest.service == "streamward-api" and ingest.kind == SERVER
        assert ingest.parent_span_id in ships
        assert ingest.attributes["streamward.run.id"] == run.attributes["streamward.run.id"]
    assert {s.service for s in spans} == {"streamward-api", "streamward-runner"}
    # the hand-placed spans only (FastAPI's own per-request spans stay off)
    assert {s.name for s in spans} == {"invoke", "run", "ship", "ingest", *consumed}


def test_one_invoke_is_one_trace_across_the_api_and_the_runner(
    fleet: Fleet, receiver: Receiver
) -> None:
    api = _start(
        fleet,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,  # alone: turns tracing on (otlp)
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export soon after a span ends
        },
    )
    # detached, continuing the caller's trace
    trace_id, caller_span, header = _traceparent()
    r = httpx.post(
        f"{api.url}/v1/sessions/s1/invoke",
        json={"input": {"text": "hi", "chunks": 3}, "mode": "detached"},
        headers={"traceparent": header},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    wait_until(_complete(receiver, trace_id), "the detached invoke's trace")
    spans = receiver.trace(trace_id)
    _check_trace(spans, caller_span, "detached")
    assert _one(spans, "invoke").attributes["streamward.run.id"] == r.json()["run_id"]

    # streamed, same session (a warm owner), another caller's trace
    trace2, caller2, header2 = _traceparent()
    with httpx.stream(
        "POST",
        f"{api.url}/v1/sessions/s1/invoke",
        json={"input": {"text": "again"}},
        headers={"traceparent": header2},
        timeout=30,
    ) as streamed:
        lines = [json.loads(x) for x in streamed.iter_lines() if x]
    assert lines[-1]["type"] == "run.completed"
    wait_until(_complete(receiver, trace2), "the streamed invoke's trace")
    _check_trace(receiver.trace(trace2), caller2, "stream")

    # no traceparent: the invoke span starts a trace of its own, the run continues it
    failing = {"input": {"fail": True}, "mode": "detached"}
    r = httpx.post(f"{api.url}/v1/sessions/s1/invoke", json=failing, timeout=30)
    run_id = r.json()["run_id"]

    def new_trace() -> str | None:
        for s in list(receiver.spans):
            if s.name == "invoke" and s.attributes.get("streamward.run.id") == run_id:
                return s.trace_id
        return None

    wait_until(lambda: new_trace() is not None, "the new trace's invoke span")
    new_id = new_trace()
    assert new_id is not None and new_id not in (trace_id, trace2)
    wait_until(_complete(receiver, new_id), "the new trace")
    _check_trace(receiver.trace(new_id), None, "detached", "failed")

    # the API's log lines of the run's ingest requests carry the caller's trace id
    ingest_lines = [
        x for x in _json_lines(api) if x.get("path") == "/admin/sessions/transcripts/ingest"
    ]
    assert trace_id in {x.get("trace_id") for x in ingest_lines}


def test_spans_still_buffered_are_exported_when_the_processes_stop(
    fleet: Fleet, receiver: Receiver
) -> None:
    # an export interval far longer than the test: only the flush at exit can send them
    api = _start(
        fleet,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"},
    )
    trace_id, caller_span, header = _traceparent()
    with httpx.stream(
        "POST",
        f"{api.url}/v1/sessions/s1/invoke",
        json={"input": {"text": "bye"}},
        headers={"traceparent": header},
        timeout=30,
    ) as streamed:
        assert [json.loads(x) for x in streamed.iter_lines() if x][-1]["type"] == "run.completed"
    assert receiver.trace(trace_id) == []  # still buffered in both processes
    fleet.stop()  # SIGTERM: each process shuts its tracer provider down on the way out
    _check_trace(receiver.trace(trace_id), caller_span, "stream")


def _json_lines(proc: Proc) -> list[dict[str, object]]:
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_tracing_off_exports_nothing_and_logs_still_share_the_callers_trace_id(
    fleet: Fleet, receiver: Receiver
) -> None:
    # an endpoint is set, but OTEL_SDK_DISABLED wins (the SDK's own rule)
    api = _start(
        fleet,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_SDK_DISABLED": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    )
    trace_id, _, header = _traceparent()
    r = httpx.post(
        f"{api.url}/v1/sessions/s1/invoke",
        json={"input": {"text": "hi"}, "mode": "detached"},
        headers={"traceparent": header},
        timeout=30,
    )
    assert r.status_code == 202, r.text

    # the caller's trace id travelled in the inbox entry to the runner, which sent it with
    # the run's ingest requests: the API's log line of each carries it
    def ingest_logged() -> bool:
        return any(
            x.get("path") == "/admin/sessions/transcripts/ingest" and x.get("trace_id") == trace_id
            for x in _json_lines(api)
        )

    wait_until(ingest_logged, "the run's ingest logged with the caller's trace id")
    time.sleep(0.5)  # ten export intervals: a span would have been sent by now
    assert receiver.requests == 0 and receiver.spans == []
    assert not any("tracing on" in str(x.get("msg")) for x in _json_lines(api))


def test_the_off_switch_follows_the_otel_variables() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.wanted_exporter({}) is None  # nothing set: off
    assert tracing.wanted_exporter(endpoint) == "otlp"
    assert tracing.wanted_exporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "x"}) == "otlp"
    assert tracing.wanted_exporter({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.wanted_exporter({**endpoint, "OTEL_SDK_DISABLED": "TRUE"}) is None
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert tracing.wanted_exporter({"OTEL_TRACES_EXPORTER": "zipkin"}) is None


def test_with_the_variables_unset_no_tracing_sdk_is_loaded() -> None:
    # a fresh interpreter: the API app built and the runner's modules imported, tracing set
    # up as the processes do it, with every OTEL_* variable removed
    code = """
import os, sys
for k in [k for k in os.environ if k.startswith("OTEL_")]:
    del os.environ[k]
from streamward.core import logs, tracing
assert tracing.setup_tracing("streamward-api") is False
from streamward.api.config import Settings
from streamward.api.main import create_app
import streamward.runner.replica
create_app(Settings(insecure_no_auth=True))
# (redis-py imports the SDK's metrics package when it is installed: not ours, and unused)
tracing_sdk = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
loaded = sorted(m for m in sys.modules if m.startswith(tracing_sdk))
assert loaded == [], loaded
from opentelemetry import trace
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none set
assert tracing.TRACING_ON is False
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_log_lines_take_the_current_spans_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tracing on (``setup_tracing`` installs the hook), a line logged inside a span
    names that span's trace, even when the request's own traceparent bound other ids."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("streamward.test.tracing")
    log.addHandler(handler)
    log.propagate = False
    try:
        with logs.bind(trace_id="a" * 32, span_id="b" * 16):
            log.warning("caller's ids")
            monkeypatch.setattr(logs, "span_ids", lambda: ("a" * 32, "c" * 16))
            log.warning("inside the span")
            monkeypatch.setattr(logs, "span_ids", lambda: None)
            log.warning("no span current")
    finally:
        log.removeHandler(handler)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["trace_id"], x["span_id"]) for x in lines] == [
        ("a" * 32, "b" * 16),
        ("a" * 32, "c" * 16),
        ("a" * 32, "b" * 16),
    ]


def test_the_inbox_carries_the_callers_traceparent_with_tracing_off() -> None:
    assert not tracing.TRACING_ON
    assert tracing.inbox_traceparent() == ""
    with logs.bind(trace_id="d" * 32, span_id="e" * 16):
        assert tracing.inbox_traceparent() == f"00-{'d' * 32}-{'e' * 16}-01"
