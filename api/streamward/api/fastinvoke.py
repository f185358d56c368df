"""The API's two hottest requests, served below FastAPI's routing: the detached invoke and
the runners' coalesced transcript ingest.

A detached invoke through FastAPI walks its exception and exit-stack middlewares, the
router's route-by-route match, the dependency solver and a ``json.loads`` + model validation
of the body: measured under the invoke bench, about a fifth of the API's CPU per invoke
(docs/performance.md). ``FastInvoke`` sits inside streamward's own middlewares (request
context, metrics, body limit: they apply as for any request) and serves ``POST
/v1/sessions/{id}/invoke`` itself when the request is the plain case: a JSON body that
validates as ``InvokeRequest`` (pydantic's JSON parser), ``mode=detached``, no callback,
and a token the route's scope admits. It then runs the endpoint's own code (auth,
``invoke_detached``, the same response), and an exception raised after the submit started is
answered by the app's own exception handler for it.

``POST /admin/sessions/transcripts/ingest/batch`` (the runners' shippers coalesced, one
request per few runs) is served the same way: a JSON body that validates as
``IngestBatchRequest`` and an admin token, then the route's own endpoint function; so is
``POST /admin/sessions/transcripts/ingest`` (a lone run's post, ``IngestRequest``).

Anything else (another path or mode, a body or token the app would refuse) is handed to the
app with the body replayed, so every error answer is the app's own, byte for byte. With
tracing on (OTEL_*), every request goes through the routes, which make the spans.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamward.api import invoke as invocation
from streamward.api.deps import AppState, caller_project, require_admin
from streamward.api.problems import ProblemError
from streamward.api.routes import ingest
from streamward.api.schemas import IngestBatchRequest, IngestRequest, InvokeRequest
from streamward.core import tracing
from streamward.lua.errors import InvalidId

INVOKE_PATH = re.compile(r"^/v1/sessions/([A-Za-z0-9._:-]{1,200})/invoke$")
INVOKE_TEMPLATE = "/v1/sessions/{session_id}/invoke"
INGEST_PATH = "/admin/sessions/transcripts/ingest"
INGEST_BATCH_PATH = f"{INGEST_PATH}/batch"


def _post_route(routes: list[BaseRoute], path: str) -> BaseRoute:
    """The route object routing would match (FastAPI matches the including routers' own
    route objects): its declared scope is what the auth check reads."""
    return next(
        r
        for r in routes
        if getattr(r, "path", None) == path and "POST" in (getattr(r, "methods", None) or ())
    )


class FastInvoke:
    """ASGI middleware: the plain detached invoke and the batch ingest without FastAPI's
    per-request machinery."""

    def __init__(
        self,
        app: ASGIApp,
        api: FastAPI,
        routes: list[BaseRoute],
        ingest_routes: list[BaseRoute] | None = None,
    ) -> None:
        self.app = app
        self.api = api
        self.route = _post_route(routes, INVOKE_TEMPLATE)
        # path -> (body model, route, its endpoint's name in routes/ingest.py): the runners'
        self.ingests: dict[str, tuple[Any, BaseRoute, str]] = {}
        if ingest_routes is not None:
            self.ingests = {
                INGEST_PATH: (
                    IngestRequest,
                    _post_route(ingest_routes, INGEST_PATH),
                    "ingest",
                ),
                INGEST_BATCH_PATH: (
                    IngestBatchRequest,
                    _post_route(ingest_routes, INGEST_BATCH_PATH),
                    "ingest_batch",
                ),
            }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or tracing.TRACING_ON:
            # with tracing on, the route makes the invoke span (api/tracing.py)
            await self.app(scope, receive, send)
            return
        if (served := self.ingests.get(scope["path"])) is not None:
            await self._ingest(scope, receive, send, *served)
            return
        m = INVOKE_PATH.match(scope["path"])
        if m is None or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away mid-body: nothing to answer
            return
        replay = _replay(body, receive)
        try:
            req = InvokeRequest.model_validate_json(body)
        except ValidationError:
            req = None
        if req is None or req.mode != "detached" or req.callback is not None:
            await self.app(scope, replay, send)
            return
        state: AppState = scope["app"].state.sw
        # what routing would have set: the scope check and the metrics read the route
        scope["route"] = self.route
        scope["path_params"] = {"session_id": m.group(1)}
        request = Request(scope, replay)
        try:
            project = await caller_project(request, state)
            sk = state.keys.session(project, m.group(1))
        except (ProblemError, InvalidId):
            await self.app(scope, replay, send)  # the app answers the refusal
            return
        run_id = f"run_{uuid.uuid4().hex}"
        try:
            accepted = await invocation.invoke_detached(state, sk, req, run_id)
        except Exception as exc:
            response = await self._handled(request, exc)
        else:
            response = invocation.accepted_response(accepted)
        await response(scope, replay, send)

    async def _ingest(
        self, scope: Scope, receive: Receive, send: Send, model: Any, route: Any, endpoint: str
    ) -> None:
        if not _json_content(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        replay = _replay(body, receive)
        try:
            req = model.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay, send)  # the app's 422, as the route gives it
            return
        scope["route"] = route
        scope["path_params"] = {}
        request = Request(scope, replay)
        try:
            await require_admin(request)  # the router's dependency
        except ProblemError:
            await self.app(scope, replay, send)
            return
        try:
            response = await getattr(ingest, endpoint)(req, request)  # the route's own
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, replay, send)

    async def _handled(self, request: Request, exc: Exception) -> Any:
        """The app's answer to an exception raised by an endpoint's code."""
        handler = _handler_for(self.api, exc)
        if handler is None:
            raise exc  # to the server error middleware, as from the endpoint
        return await handler(request, exc)


def _json_content(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the connection's own messages (a streamed answer
    listens for the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _handler_for(api: FastAPI, exc: Exception) -> Any:
    """The app's handler for ``exc`` (by its class's MRO), as Starlette's exception
    middleware finds it; None for ``Exception`` itself (the server error middleware's)."""
    handlers = api.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
