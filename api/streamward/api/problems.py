"""RFC 9457 problem+json errors: one exception type, stable codes, and the app's handlers."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ClusterDownError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from streamward.api.schemas import Problem
from streamward.core import jsonsafe
from streamward.lua import errors as E

log = logging.getLogger("streamward.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# Starlette raises these for routing-level errors; give each a stable code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    code: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build the problem+json response (also used by the body-limit middleware)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
    }
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def refusal_problem(exc: ProblemError | E.StreamwardError) -> Response:
    """The problem a ProblemError or a write refusal answers (stale token, not owner, seq gap,
    any other lease error): the exception handlers' answer, and the batch ingest's per item."""
    if isinstance(exc, ProblemError):
        return problem_response(exc.status, exc.code, exc.detail, exc.headers, **exc.extra)
    if isinstance(exc, E.StaleToken):
        return problem_response(409, "stale_token", str(exc), epoch=exc.epoch)
    if isinstance(exc, E.SeqGap):
        return problem_response(422, "seq_gap", str(exc), last_seq=exc.last_seq, seq=exc.seq)
    return problem_response(409, exc.code, str(exc))


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # FastAPI's raw errors carry the offending input and exception objects in ctx; keep
    # only what a caller needs (and what is always JSON-serialisable).
    out = []
    for err in exc.errors():
        out.append(
            {
                "loc": [str(x) for x in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return out


def _detail_of(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def install_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return refusal_problem(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        code = "invalid_id" if _is_id_error(errors) else "validation_error"
        if any(e["type"] == "json_invalid" for e in errors):
            code = "malformed_json"
        elif any(e["type"] == jsonsafe.ERROR_TYPE for e in errors):
            code = jsonsafe.ERROR_TYPE  # NaN, a lone surrogate, an integer beyond 64 bits
        return problem_response(422, code, _detail_of(errors), errors=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if _is_body_parse_error(exc):
            return problem_response(422, "malformed_json", _BODY_PARSE_DETAIL)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return problem_response(exc.status_code, code, detail, headers)

    async def on_invalid_id(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.InvalidId)
        return problem_response(422, "invalid_id", str(exc), field=exc.field)

    async def on_stale(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.StaleToken)
        return refusal_problem(exc)

    async def on_seq_gap(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.SeqGap)
        return refusal_problem(exc)

    async def on_busy(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.SessionBusy)
        return problem_response(
            409,
            "session_busy",
            str(exc),
            active_run_id=exc.active_run_id or None,
            pending=exc.pending,
        )

    async def on_type_mismatch(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.TypeMismatch)
        return problem_response(
            409, "type_mismatch", str(exc), session_type=exc.session_type, requested=exc.requested
        )

    async def on_quota(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.QuotaExceeded)
        return problem_response(
            429, exc.code, str(exc), {"Retry-After": str(exc.retry_after_s)}, **quota_fields(exc)
        )

    async def on_lease(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, E.StreamwardError)
        return refusal_problem(exc)

    async def on_redis_down(_: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        return problem_response(
            503,
            "redis_unavailable",
            "the session store is unreachable; retry later",
            {"Retry-After": str(retry_after_s)},
        )

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(500, "internal_error", "unexpected server error")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(E.InvalidId, on_invalid_id)
    app.add_exception_handler(E.StaleToken, on_stale)
    app.add_exception_handler(E.SeqGap, on_seq_gap)
    app.add_exception_handler(E.SessionBusy, on_busy)
    app.add_exception_handler(E.TypeMismatch, on_type_mismatch)
    app.add_exception_handler(E.QuotaExceeded, on_quota)
    app.add_exception_handler(E.LeaseError, on_lease)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    # a failover in progress: Cluster slots without a master, a demoted Sentinel master
    for failover_error in (ClusterDownError, TryAgainError, ReadOnlyError):
        app.add_exception_handler(failover_error, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)
    _document_problems(app)


def quota_fields(exc: E.QuotaExceeded) -> dict[str, Any]:
    """The problem fields of a quota refusal: which limit, and its figures."""
    if isinstance(exc, E.InboxFull):
        return {"reason": "inbox_full", "pending": exc.pending, "limit": exc.limit}
    if isinstance(exc, E.SessionLimit):
        live = exc.live if exc.live >= 0 else None
        return {"reason": exc.reason, "live_sessions": live, "limit": exc.limit}
    if isinstance(exc, E.RateLimited):
        return {"reason": exc.reason, "retry_after_ms": exc.retry_after_ms}
    return {}


def _document_problems(app: FastAPI) -> None:
    """The OpenAPI document says what the handlers above send: every 4xx/5xx response is
    ``application/problem+json`` (FastAPI documents its own 422 shape as application/json)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        ref = {"$ref": "#/components/schemas/Problem"}
        doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
            Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for operations in doc.get("paths", {}).values():
            for op in operations.values():
                for status, response in op.get("responses", {}).items():
                    if status[:1] in ("4", "5"):
                        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
        app.openapi_schema = doc
        return doc

    # an instance attribute shadows the method: FastAPI documents overriding it this way
    setattr(app, "openapi", openapi)  # noqa: B010 (mypy refuses assigning to a method)


_BODY_PARSE_DETAIL = "the request body is not valid JSON (UTF-8 text, nesting within limits)"


def _is_body_parse_error(exc: StarletteHTTPException) -> bool:
    # FastAPI answers 400 ``from`` the parse error for a JSON body that json.loads rejects
    # with anything but JSONDecodeError: bytes that are not UTF-8 (UnicodeDecodeError),
    # an integer of over 4300 digits (ValueError), nesting past the recursion limit
    return exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError)


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI document gives the request's path. Starlette's 405 names
    only the methods of the first route (or included router) whose path matched, so a path
    served from two routers, or by GET and DELETE, had an ``Allow`` missing some."""
    methods: set[str] = set()
    path = request.url.path
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations if m.upper() in _HTTP_METHODS}
    return ", ".join(sorted(methods))


_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}


def _is_id_error(errors: list[dict[str, Any]]) -> bool:
    # a path id that fails its pattern is the one case with its own code (invalid_id)
    return bool(errors) and all(e["loc"][:1] == ["path"] for e in errors)


def install_refusal_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    """Redis refusing writes (out of memory under noeviction, read-only, failing saves, too
    few replicas) is load to shed, not a bug: 503 ``redis_unavailable`` with Retry-After and
    the ``reason`` (``lua.errors.WRITE_REFUSALS``). Any other ResponseError stays a 500."""

    async def on_response_error(_: Request, exc: Exception) -> Response:
        reason = E.write_refusal(exc)
        if reason is None:
            log.exception("unhandled error", exc_info=exc)
            return problem_response(500, "internal_error", "unexpected server error")
        log.warning("redis refuses writes (%s): %s", reason, exc)
        return problem_response(
            503,
            "redis_unavailable",
            f"the session store refuses writes ({reason}); retry later",
            {"Retry-After": str(retry_after_s)},
            reason=reason,
        )

    # ResponseError covers OutOfMemoryError and the unmapped codes (MISCONF, NOREPLICAS);
    # ReadOnlyError, ClusterDownError and TryAgainError keep their own (failover) handler
    app.add_exception_handler(ResponseError, on_response_error)
