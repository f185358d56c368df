"""The request body limit: 413 problem for a body over ``max_bytes``, 400 for a bad length."""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamward.api.problems import problem_response


class BodyLimit:
    """413 for bodies over ``max_bytes``: checks Content-Length and counts the streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await self._reject(scope, receive, send, 400, "bad_content_length")
                    return
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send, 413, "body_too_large")
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # chunked bodies carry no Content-Length: stop reading at the limit.
                    # An HTTPException, because FastAPI re-raises those from body parsing
                    # (anything else becomes a generic 400).
                    raise StarletteHTTPException(
                        413, f"request body exceeds {self.max_bytes} bytes"
                    )
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except StarletteHTTPException as exc:
            # raised from receive outside a route's own error handling (e.g. a middleware)
            if started or exc.status_code != 413:
                raise
            await problem_response(413, "body_too_large", str(exc.detail))(scope, receive, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: str
    ) -> None:
        detail = (
            f"request body exceeds {self.max_bytes} bytes"
            if status == 413
            else "invalid Content-Length"
        )
        await problem_response(status, code, detail, {"Connection": "close"})(scope, receive, send)
