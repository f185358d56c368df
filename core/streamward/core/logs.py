"""Structured logging shared by the API and the runner: JSON lines, or readable on a TTY.

Every line carries ``ts, level, logger, msg`` and the context fields ``replica_id,
session_id, run_id, token`` (null when unknown), plus ``trace_id`` / ``span_id`` while a
request that came in with a W3C ``traceparent`` header is being served, or while a span is
current when OpenTelemetry tracing is on (``core/tracing.py``: its ids then, the same trace
id as the header's when the span continues it). Context comes from
contextvars (``bind()``), so concurrent requests and session actors never mix fields up;
``set_process_fields()`` sets defaults for the whole process (a runner's ``replica_id``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamward.core.timefmt import rfc3339

CONTEXT_FIELDS = ("replica_id", "session_id", "run_id", "token")
TRACE_FIELDS = ("trace_id", "span_id")
ContextValue = str | int | None

_vars: dict[str, ContextVar[ContextValue]] = {
    name: ContextVar(f"streamward_log_{name}", default=None)
    for name in (*CONTEXT_FIELDS, *TRACE_FIELDS)
}
# process-wide defaults, used when the contextvar is unset (a runner's own replica id)
_process: dict[str, ContextValue] = {}
# set by tracing.setup_tracing: (trace id, span id) of the current OpenTelemetry span, if any
span_ids: Callable[[], tuple[str, str] | None] | None = None

# the attributes every LogRecord has; anything else came in through ``extra=``
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` from a W3C traceparent header, None when it is not valid."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, _flags, rest = m.groups()
    # version ff is forbidden; version 00 has exactly four fields; all-zero ids are invalid
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"}:
        return None
    if set(span_id) == {"0"}:
        return None
    return trace_id, span_id


def set_process_fields(**fields: ContextValue) -> None:
    """Defaults for every line of this process (e.g. ``replica_id`` of a runner)."""
    for name, value in fields.items():
        if name not in _vars:
            raise ValueError(f"unknown log field {name!r}")
        _process[name] = value


@contextlib.contextmanager
def bind(**fields: ContextValue) -> Iterator[None]:
    """Attach fields to every line logged inside the block (this task and its children)."""
    tokens = []
    for name, value in fields.items():
        if name not in _vars:
            raise ValueError(f"unknown log field {name!r}")
        tokens.append((_vars[name], _vars[name].set(value)))
    try:
        yield
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)


def current_fields() -> dict[str, ContextValue]:
    """The context fields as a log line would show them right now."""
    out: dict[str, ContextValue] = {}
    for name, var in _vars.items():
        value = var.get()
        out[name] = value if value is not None else _process.get(name)
    if span_ids is not None and (ids := span_ids()) is not None:
        out["trace_id"], out["span_id"] = ids  # the span's ids: what the trace backend shows
    return out


def bound_traceparent() -> str:
    """The caller's trace ids bound for this request (``RequestContext``) as a traceparent,
    "" when none: with tracing off, what the inbox carries to the run's owner."""
    trace_id = _vars["trace_id"].get()
    if trace_id is None:
        return ""
    return f"00-{trace_id}-{_vars['span_id'].get()}-01"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the context fields are always present (null when unknown)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = current_fields()
        doc: dict[str, Any] = {
            "ts": rfc3339(int(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            doc[name] = fields[name]
        for name in TRACE_FIELDS:
            # only while a traced request is served: absent keys say "no trace" plainly
            if fields[name] is not None:
                doc[name] = fields[name]
        for k, v in _extras(record).items():
            doc.setdefault(k, v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: msg key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        ms = int(record.created * 1000) % 1000
        pairs = {k: v for k, v in current_fields().items() if v is not None}
        pairs.update(_extras(record))
        tail = " ".join(f"{k}={v}" for k, v in pairs.items())
        line = f"{t}.{ms:03d} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if tail:
            line = f"{line}  {tail}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(
    level: str | int = "info",
    *,
    json_output: bool | None = None,
    stream: TextIO | None = None,
    **process_fields: ContextValue,
) -> None:
    """Configure the root logger: JSON lines unless ``stream`` (stdout) is a terminal."""
    out = stream if stream is not None else sys.stdout
    if json_output is None:
        json_output = not (hasattr(out, "isatty") and out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if json_output else HumanFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn's loggers reach the root handler instead of printing their own format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # one line per outgoing HTTP call (runner → API) is noise; failures are logged by callers
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
    set_process_fields(**process_fields)


access_log = logging.getLogger("streamward.access")


class RequestContext:
    """ASGI middleware: trace ids from ``traceparent`` for the request, one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace: tuple[str, str] | None = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                trace = parse_traceparent(value.decode("latin-1"))
                break
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        fields: dict[str, ContextValue] = {}
        if trace is not None:
            fields = {"trace_id": trace[0], "span_id": trace[1]}
        t0 = time.perf_counter()
        with bind(**fields):
            try:
                await self.app(scope, receive, send_status)
            finally:
                if access_log.isEnabledFor(logging.INFO):
                    # path params exist once routing ran: name the session without parsing paths
                    params = scope.get("path_params") or {}
                    sid = params.get("session_id")
                    with bind(session_id=sid) if sid else contextlib.nullcontext():
                        access_log.info(
                            "%s %s %s",
                            scope["method"],
                            scope["path"],
                            status or "-",
                            extra={
                                "method": scope["method"],
                                "path": scope["path"],
                                "status": status,
                                "duration_s": round(time.perf_counter() - t0, 6),
                            },
                        )
