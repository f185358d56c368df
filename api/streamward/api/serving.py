"""Serving the app under uvicorn so that slow or idle clients cannot exhaust it.

uvicorn bounds neither the time to send a request's headers nor its body: a connection
trickling a byte every few seconds stays open for ever, and enough of them starve everyone.
``DeadlineProtocol`` (uvicorn's httptools protocol plus two timers) cuts a connection whose
headers are not complete ``header_timeout_s`` after it opened (or after its first byte on a
kept-alive connection), or whose body is not complete ``body_timeout_s`` after its headers,
with a 408 problem; headers larger than ``max_header_bytes`` get 431. uvicorn's own
``limit_concurrency`` then bounds the connections, and a second listener with its own limit
(``admin_port``) keeps the runners' ingest and the probes usable while the public one sheds load.
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
from asyncio import TimerHandle
from typing import Any, ClassVar, cast

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamward.api.config import Settings
from streamward.api.problems import problem_response
from streamward.api.tokens import build_table

# what the admin listener serves: the runners' ingest and admin API, probes and metrics
ADMIN_PATHS = ("/admin/", "/livez", "/readyz", "/metrics")


def problem_bytes(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection (written raw by
    the protocol, which has no ASGI app to answer through)."""
    body = orjson.dumps(
        {
            "type": "about:blank",
            "title": http.HTTPStatus(status).phrase,
            "status": status,
            "code": code,
            "detail": detail,
        }
    )
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a body deadline and a header size
    cap. Configured through class attributes: ``protocol_class`` makes a subclass per listener."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_header_bytes: ClassVar[int] = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport))  # type: ignore[arg-type]
        self._deadline: TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        # a connection that never sends a byte is as slow as one that sends too few
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_headers and (self.cycle is None or self.cycle.response_complete):
            # the first bytes of the next request on a kept-alive connection (uvicorn's
            # keep-alive timeout covered the idle time before them)
            self._in_headers = True
            self._header_bytes = 0
            self._arm(self.header_timeout_s)
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            # counted only while the headers are still incomplete after this chunk, so a
            # body arriving with its headers in one read is never mistaken for them
            self._refuse(431, "headers_too_large", f"headers exceed {self.max_header_bytes} bytes")
        elif self._deadline is None and self._body_pending():
            self._arm(self.body_timeout_s)

    def _body_pending(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_complete

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # the response is written in full (head and body corked together): it leaves now,
        # not at the end of the loop turn, so the waiting caller has it a turn sooner
        cast(CorkedTransport, self.transport).flush()
        super().on_response_complete()

    def _arm(self, delay_s: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            what = f"request headers not complete within {self.header_timeout_s:g} s"
            self._refuse(408, "request_timeout", what)
            return
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            return
        # the app may be waiting in receive(): tell it the client is gone, and answer for it
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            what = f"request body not complete within {self.body_timeout_s:g} s"
            self._refuse(408, "request_timeout", what)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        self._disarm()
        self._in_headers = False
        self.logger.info("cut a slow or oversized request from %s: %s", self.client, detail)
        self.transport.write(problem_bytes(status, code, detail))
        self.transport.close()


class CorkedTransport:
    """A transport whose writes in one loop turn leave in one ``send``: uvicorn writes a
    response's head and its body apart (two ASGI messages), and on loopback or a pod network
    each send is a syscall that runs the receiver's TCP stack too. Measured under the invoke
    bench, sends were a quarter of the API's CPU; corked, a response is one.

    The buffer is flushed when the response is complete (``on_response_complete``), else at
    the end of the loop turn (``call_soon``: a streamed response's chunks), before ``close``
    and before anything that asks about the write buffer; everything else is the real
    transport.
    """

    __slots__ = ("_buf", "_flush_handle", "_loop", "_t")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport
        self._buf: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._buf.append(bytes(data))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def flush(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # (a no-op when this is that handle's call)
        buf = self._buf
        if not buf:
            return
        self._buf = []
        if self._t.is_closing():
            return
        self._t.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def close(self) -> None:
        self.flush()
        self._t.close()

    def write_eof(self) -> None:
        self.flush()  # never ahead of what was written before it
        self._t.write_eof()

    def get_write_buffer_size(self) -> int:
        self.flush()
        return self._t.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, abort, set_protocol ...
        return getattr(self._t, name)


def protocol_class(settings: Settings) -> type[DeadlineProtocol]:
    """A ``DeadlineProtocol`` subclass carrying ``settings``' deadlines."""
    return type(
        "StreamwardProtocol",
        (DeadlineProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
        },
    )


class AdminOnly:
    """The admin listener's app: the admin API, probes and metrics; 404 for the rest (the
    public API stays on the public listener, so policies can treat the ports apart)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PATHS):
            await self.app(scope, receive, send)
            return
        detail = "the admin port serves /admin, /livez, /readyz and /metrics only"
        await problem_response(404, "not_on_admin_port", detail)(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def auth_refusal(settings: Settings) -> str | None:
    """Why the API must not start: /v1 without tokens on a non-loopback bind (None: fine).
    Raises ``TokenConfigError`` when the token settings cannot be read."""
    if build_table(settings).v1_auth or settings.insecure_no_auth or is_loopback(settings.host):
        return None
    return (
        f"streamward api: refusing to serve /v1 without API tokens on {settings.host}: "
        "set STREAMWARD_TOKENS (or STREAMWARD_TOKENS_FILE, STREAMWARD_API_TOKENS), bind "
        "127.0.0.1, or pass --insecure-no-auth (STREAMWARD_INSECURE_NO_AUTH=true)"
    )


def uvicorn_options(settings: Settings, *, admin: bool) -> dict[str, Any]:
    """The uvicorn.Config options bounding one listener (public or admin)."""
    return {
        "http": protocol_class(settings),
        "limit_concurrency": (
            settings.admin_limit_concurrency if admin else settings.limit_concurrency
        ),
        "timeout_keep_alive": settings.keep_alive_s,
        # nothing reads the client address (the access log names none), so uvicorn's
        # X-Forwarded-* middleware would only be one more layer around every request
        "proxy_headers": False,
    }
