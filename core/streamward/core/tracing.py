"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` variables ask for it.

``setup_tracing()`` runs once at process start (the API's ``serve``, the runner's CLI). With
tracing off (the default) it imports nothing of OpenTelemetry and leaves ``TRACING_ON``
False; every call site checks ``tracing.TRACING_ON`` (the module attribute, read at call
time) before any span work, so the hot paths pay one attribute read. With tracing on, spans
go through the SDK's ``BatchSpanProcessor`` to an OTLP/HTTP (protobuf) exporter configured
by the exporter's own ``OTEL_EXPORTER_OTLP_*`` variables. docs/operations.md ("Tracing").

When is it on (the OpenTelemetry SDK's own rule, except that an unset exporter means off):
``OTEL_SDK_DISABLED=true`` turns it off whatever else is set; else ``OTEL_TRACES_EXPORTER``
decides when set (``otlp`` or ``console``; ``none`` is off); else it is on when an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``).

The trace context crosses processes as a W3C ``traceparent`` string: in the HTTP headers,
and in the inbox entry between the API and the runner (its ``trace`` field).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from streamward.core import logs

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger("streamward.tracing")

# read as ``tracing.TRACING_ON`` (never imported by name: setup_tracing rebinds it)
TRACING_ON = False
EXPORTERS = ("otlp", "console")
SUPPORTED_PROTOCOL = "http/protobuf"
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def wanted_exporter(env: Mapping[str, str]) -> str | None:
    """The exporter the ``OTEL_*`` variables ask for (``otlp`` / ``console``), or None: off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        chosen = [x.strip() for x in named.split(",") if x.strip() in EXPORTERS]
        others = [x.strip() for x in named.split(",") if x.strip() not in (*EXPORTERS, "none")]
        if others:
            log.warning("OTEL_TRACES_EXPORTER: %s not supported (only otlp, console)", others)
        return chosen[0] if chosen else None
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def setup_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Start exporting spans when the environment asks for it; returns whether it does.

    ``service_name`` (``streamward-api`` / ``streamward-runner``) is the resource's
    ``service.name`` unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names one.
    """
    global TRACING_ON, _tracer, _provider
    env = os.environ if env is None else env
    exporter_name = wanted_exporter(env)
    if exporter_name is None or TRACING_ON:
        return TRACING_ON
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        log.warning("tracing asked for by OTEL_* but not installed: pip install 'streamward[otel]'")
        return False
    exporter: SpanExporter
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP export needs the otel extra: pip install 'streamward[otel]'")
            return False
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", SUPPORTED_PROTOCOL
        )
        if protocol != SUPPORTED_PROTOCOL:
            log.warning("OTLP protocol %r not supported: exporting over http/protobuf", protocol)
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    detected = OTELResourceDetector().detect()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    resource = Resource.create({"service.name": service_name}).merge(detected)
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
    # batch delay, queue and export sizes: OTEL_BSP_*; flushed at exit (shutdown_on_exit)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("streamward")
    logs.span_ids = current_ids
    TRACING_ON = True
    log.info("tracing on: %s exporter, service %s", exporter_name, service_name)
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (also done at interpreter exit)."""
    global TRACING_ON, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    TRACING_ON, _tracer, _provider = False, None, None
    logs.span_ids = None


def tracer() -> Tracer:
    assert _tracer is not None, "tracing is off: check tracing.TRACING_ON first"
    return _tracer


def span_kind(name: str) -> SpanKind:
    from opentelemetry.trace import SpanKind

    return SpanKind[name.upper()]


def context_of(traceparent: str) -> Context | None:
    """The remote parent a ``traceparent`` names (None for "" or an invalid one)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    from opentelemetry import trace

    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextlib.contextmanager
def span(
    name: str,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Iterator[Span]:
    """A current span (tracing on only). ``parent``: a traceparent to continue instead of the
    current context ("" starts a new trace). Exceptions end it with an error status."""
    context = None if parent is None else context_of(parent)
    if parent is not None and context is None:
        from opentelemetry.context import Context

        context = Context()  # no valid parent carried: a trace of its own
    with tracer().start_as_current_span(
        name, context=context, kind=span_kind(kind), attributes=dict(attributes or {})
    ) as current:
        yield current


def child_span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A span under the current one when it is recorded (a run's Redis call), else nothing:
    calls outside a traced request or run start no trace of their own."""
    if not TRACING_ON:
        return _NO_SPAN
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        return _NO_SPAN
    return span(name, "client", attributes)


def current_traceparent() -> str:
    """The current span's context as a ``traceparent`` ("" when there is none)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def inbox_traceparent() -> str:
    """What an enqueue stores for its run to continue: the current span's context (the
    invoke span), or with tracing off the caller's own ``traceparent`` (the log trace ids),
    so the runner's log lines carry the caller's trace id either way. "" for none."""
    if TRACING_ON:
        return current_traceparent()
    return logs.bound_traceparent()


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, None when there is none."""
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")
