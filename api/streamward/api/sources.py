"""Event sources: their config, signature checks and how their raw deliveries become the
(type, payload) pair routes evaluate (docs/routing.md#sources).

A source nobody configured is ``generic`` without verification, as before sources existed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError
from starlette.datastructures import Headers

from streamward.api.problems import ProblemError
from streamward.api.schemas import EventRequest
from streamward.core import jsonsafe
from streamward.core.contract import Id, Model
from streamward.lua.sources import SourceStore

SourceKind = Literal["github", "slack", "generic"]
Verification = Literal["none", "github", "slack", "hmac"]
SLACK_TOLERANCE_S = 300  # Slack's own advice: refuse requests older than five minutes
HeaderName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$")]


class SourceIn(Model):
    """``PUT /admin/sources/{source}``: the secret is write-only."""

    kind: SourceKind = "generic"
    verification: Verification = "none"
    secret: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    # the header an ``hmac`` source signs in (hex HMAC-SHA256 of the body, ``sha256=`` optional)
    signature_header: HeaderName = "X-Signature-256"


class SourceStored(SourceIn):
    source: Id
    project: Id = "default"


class SourceOut(Model):
    source: str
    project: str
    kind: SourceKind
    verification: Verification
    signature_header: str
    has_secret: bool


class SourcePage(Model):
    items: list[SourceOut]


def public(stored: SourceStored) -> SourceOut:
    return SourceOut(
        source=stored.source,
        project=stored.project,
        kind=stored.kind,
        verification=stored.verification,
        signature_header=stored.signature_header,
        has_secret=stored.secret is not None,
    )


DEFAULT = SourceStored(source="unknown")  # what an unconfigured source is

EVENT_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "As the source sends it: GitHub's raw payload (github), Slack's Events "
        "API envelope (slack), or {type, payload} (generic, and any source not configured).",
        # the generic envelope: what a source nobody configured takes
        "content": {"application/json": {"schema": EventRequest.model_json_schema()}},
    }
}


# -- verification ------------------------------------------------------------------------------


def _refuse(detail: str) -> ProblemError:
    return ProblemError(401, "invalid_signature", detail)


def _hex_hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def verify(src: SourceStored, headers: Headers, body: bytes, now_s: float | None = None) -> None:
    """Raise 401 ``invalid_signature`` unless the delivery is signed as the source says.

    Signatures are compared with ``hmac.compare_digest`` (constant time)."""
    if src.verification == "none":
        return
    secret = src.secret or ""
    if src.verification == "github":
        got = headers.get("x-hub-signature-256")
        if not got:
            raise _refuse("X-Hub-Signature-256 is missing")
        want = "sha256=" + _hex_hmac(secret, body)
    elif src.verification == "slack":
        got, ts = headers.get("x-slack-signature"), headers.get("x-slack-request-timestamp")
        if not got or not ts:
            raise _refuse("X-Slack-Signature and X-Slack-Request-Timestamp are required")
        try:
            ts_s = int(ts)
        except ValueError:
            raise _refuse("X-Slack-Request-Timestamp is not a number") from None
        now = time.time() if now_s is None else now_s
        if abs(now - ts_s) > SLACK_TOLERANCE_S:
            raise _refuse(f"X-Slack-Request-Timestamp is over {SLACK_TOLERANCE_S} s from now")
        want = "v0=" + _hex_hmac(secret, b"v0:" + ts.encode() + b":" + body)
    else:  # hmac
        got = headers.get(src.signature_header)
        if not got:
            raise _refuse(f"{src.signature_header} is missing")
        want = _hex_hmac(secret, body)
        got = got.removeprefix("sha256=")
    if not hmac.compare_digest(got.encode(), want.encode()):
        raise _refuse("the signature does not match the body")


# -- raw deliveries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery, normalised: what routes evaluate, and how to dedupe it."""

    type: str
    payload: Any
    delivery_id: str | None = None
    challenge: str | None = None  # Slack's url_verification: answered, nothing routed


def _invalid(loc: tuple[str, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg}])


def _json(body: bytes) -> Any:
    """Parse a body; what orjson refuses is parsed again as FastAPI would, so NaN, lone
    surrogates and huge integers answer ``invalid_json_value`` as on every other body."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = str(exc)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid((), f"Invalid JSON: {error}", "json_invalid") from None
    try:
        return jsonsafe.check(value)
    except jsonsafe.UnsafeJSON as exc:
        raise _invalid((), str(exc), jsonsafe.ERROR_TYPE) from None


def _header_id(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    return value[:200] if value else None


def _github(headers: Headers, body: bytes) -> Delivery:
    event = headers.get("x-github-event")
    if not event:
        raise ProblemError(422, "missing_event_type", "X-GitHub-Event is missing")
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode("utf-8", "replace"))  # GitHub's form content type
        payload = _json(form.get("payload", [""])[0].encode())
    else:
        payload = _json(body)
    action = payload.get("action") if isinstance(payload, dict) else None
    etype = f"{event}.{action}" if isinstance(action, str) and action else event
    return Delivery(etype[:200], payload, _header_id(headers, "x-github-delivery"))


def _slack(body: bytes) -> Delivery:
    env = _json(body)
    if not isinstance(env, dict) or not isinstance(env.get("type"), str):
        raise _invalid(("type",), "a Slack Events API envelope has a string type")
    if env["type"] == "url_verification":
        return Delivery("url_verification", env, challenge=str(env.get("challenge", "")))
    event = env.get("event")
    inner = event.get("type") if isinstance(event, dict) else None
    etype = inner if isinstance(inner, str) and inner else env["type"]
    eid = env.get("event_id")
    return Delivery(etype[:200], env, str(eid)[:200] if eid else None)


def _generic(headers: Headers, body: bytes) -> Delivery:
    try:
        req = EventRequest.model_validate(_json(body))
    except ValidationError as exc:
        errs = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errs) from None
    return Delivery(req.type, req.payload, _header_id(headers, "idempotency-key"))


def normalise(kind: SourceKind, headers: Headers, body: bytes) -> Delivery:
    """The raw body as its source sends it → (type, payload, delivery id)."""
    if kind == "github":
        return _github(headers, body)
    if kind == "slack":
        return _slack(body)
    return _generic(headers, body)


async def load_source(store: SourceStore, project: str, source: str) -> SourceStored:
    """The source's config; an unconfigured source is ``generic`` without verification."""
    raw = await store.get(project, source)
    if raw is None:
        return DEFAULT.model_copy(update={"source": source, "project": project})
    try:
        return SourceStored.model_validate_json(raw)
    except ValidationError:
        # written past the API: refuse rather than fall back to "no verification"
        raise ProblemError(
            503, "invalid_source", f"stored config of source {source!r} is not valid"
        ) from None
