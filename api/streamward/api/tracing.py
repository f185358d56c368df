"""The API's spans (tracing on only: ``create_app`` installs the middleware, the routes check
``tracing.TRACING_ON`` first): the caller's trace context made current for the request, and
the hand-placed server spans of the invoke and ingest routes. docs/operations.md, "Tracing".
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from streamward.api.problems import ProblemError
from streamward.api.schemas import InvokeRequest
from streamward.core import tracing
from streamward.core.contract import IngestRequest
from streamward.lua.keys import SessionKeys

# FastAPI's own OpenTelemetry hooks (newer FastAPI: a span for every request, its
# dependencies and serialisation, once a tracer provider exists) stay off: the API's spans
# are the hand-placed ones below, on the two hot routes only (docs/operations.md, "Tracing")
FASTAPI_TELEMETRY: Any = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "auto_configure": False,
}
RUN_HEADER = "x-streamward-run-id"  # routes/sessions.py names it; headers match any case


class TraceContext:
    """ASGI middleware: the caller's ``traceparent`` / ``tracestate`` (the propagators of
    ``OTEL_PROPAGATORS``) become the current context, so a span a route starts continues
    the caller's trace; without them the route's span starts a trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate", b"baggage")
        }
        if not carrier:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate

        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)


async def server_span(
    name: str, route: str, work: Awaitable[Response], attributes: Mapping[str, Any]
) -> Response:
    """Await a route's ``work`` inside a server span ``name``; the answer's status (and run id,
    when it names one) become attributes. A 4xx refusal is the caller's error, not the span's."""
    from opentelemetry.trace import Status, StatusCode

    attrs = {"http.request.method": "POST", "http.route": route, **attributes}
    with tracing.tracer().start_as_current_span(
        name,
        kind=tracing.span_kind("server"),
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            resp = await work
        except ProblemError as exc:
            span.set_attribute("http.response.status_code", exc.status)
            if exc.status >= 500:
                span.set_status(Status(StatusCode.ERROR, exc.code))
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        span.set_attribute("http.response.status_code", resp.status_code)
        run_id = resp.headers.get(RUN_HEADER)
        if run_id:  # an idempotent retry answers an earlier run's id
            span.set_attribute("streamward.run.id", run_id)
        return resp


INVOKE_ROUTE = "/v1/sessions/{session_id}/invoke"
INGEST_ROUTE = "/admin/sessions/transcripts/ingest"


def invoke_attributes(sk: SessionKeys, body: InvokeRequest) -> dict[str, Any]:
    return {
        "streamward.project": sk.project,
        "streamward.session.id": sk.session_id,
        "streamward.invoke.mode": body.mode,
        "streamward.invoke.multitask": body.multitask,
    }


def ingest_attributes(body: IngestRequest) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "streamward.project": body.project,
        "streamward.session.id": body.session_id,
        "streamward.run.id": body.run_id,
        "streamward.lease.token": body.token,
        "streamward.ingest.entries": len(body.entries),
    }
    if body.entries:
        attrs["streamward.ingest.first_seq"] = body.entries[0].seq
        attrs["streamward.ingest.last_seq"] = body.entries[-1].seq
    if body.advance is not None:  # this ingest also consumes the run's input (ingestAdvance)
        attrs["streamward.ingest.advance"] = body.advance.entry_id
    return attrs


def traced_invoke(work: Awaitable[Response], sk: SessionKeys, body: InvokeRequest) -> Any:
    """The invoke span: continues the caller's trace; the run it enqueues continues it."""
    return server_span("invoke", INVOKE_ROUTE, work, invoke_attributes(sk, body))


def traced_ingest(work: Awaitable[Response], body: IngestRequest) -> Any:
    """The ingest span: a child of the runner's ``ship`` span (its ``traceparent`` header)."""
    return server_span("ingest", INGEST_ROUTE, work, ingest_attributes(body))
