"""A lean keep-alive HTTP/1.1 client for the transcript shipper's ingest POSTs.

Shipping is the runner's hottest path (one POST per run at least). httpx costs ~0.5-1 ms of
CPU per request, most of it in its connection-pool bookkeeping (every request polls every
pooled socket), which made the runner the bigger half of the invoke path's CPU. This client
does one thing: POST a JSON body on a pooled connection and read the answer, parsed by
``httptools`` (the C parser uvicorn uses; content-length and chunked answers alike).

What it does not do, and what the runner then falls back to httpx for (``make_ingest_http``):
proxies (``HTTP(S)_PROXY`` applying to the API's address), and any platform without
``httptools``. TLS (``https://``) is supported with the default context.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

IDLE_KEEP_S = 3.0  # below uvicorn's 5 s keep-alive: do not reuse what the server may close
MAX_CONNECTIONS = 64
MAX_IDLE = 64  # as many as may be open: a burst must not close and reopen them


class IngestHTTPError(Exception):
    """The request did not get an HTTP answer (connect/read failure, timeout, bad answer)."""


@dataclass(slots=True)
class IngestResponse:
    """The part of an answer the shipper reads (httpx-like names)."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[IngestResponse] | None = None
        self._got_bytes = False
        self._keep_alive = False

    # -- protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(IngestHTTPError(f"connection closed before the answer ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(IngestHTTPError(f"bad HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close the transport

    # -- httptools callbacks --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        # read here: once the message is complete the parser has reset its state
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            status = self._parser.get_status_code()
            w.set_result(IngestResponse(status, b"".join(self._body)))

    # -- use --------------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes) -> IngestResponse:
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise IngestHTTPError("connection closed")
        self._body = []
        self._got_bytes = False
        self._keep_alive = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            resp = await self._waiter
        finally:
            self._waiter = None
        if not self._keep_alive:
            self.close()
        return resp

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes


class _Origin:
    """Pooled connections to one scheme://host:port."""

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.host = host
        self.port = port
        https = scheme == "https"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if https else None
        default = 443 if scheme == "https" else 80
        self.host_header = host if port == default else f"{host}:{port}"
        self.idle: deque[_Conn] = deque()
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def connect(self, timeout_s: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(_Conn, self.host, self.port, ssl=self.ssl)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise IngestHTTPError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        return conn

    def take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to be closed
            if not conn.closed and now - conn.idle_since < IDLE_KEEP_S:
                return conn
            conn.close()
        return None

    def give_back(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        while len(self.idle) > MAX_IDLE:
            self.idle.popleft().close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class IngestHTTP:
    """``await post(url, content=..., headers=..., timeout=...)`` -> IngestResponse.

    Raises IngestHTTPError when no answer came (the shipper retries those; ingest is
    idempotent by seq, so a retried POST never duplicates an entry).
    """

    def __init__(self, connect_timeout_s: float = 1.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._paths: dict[str, tuple[_Origin, bytes]] = {}

    def _target(self, url: str) -> tuple[_Origin, bytes]:
        got = self._paths.get(url)
        if got is not None:
            return got
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(parts.scheme, parts.hostname, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        got = self._paths[url] = (origin, path.encode())
        return got

    # httpx's signature (timeout included): the shipper calls either client
    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
    ) -> IngestResponse:
        origin, path = self._target(url)
        head = [b"POST ", path, b" HTTP/1.1\r\nHost: ", origin.host_header.encode()]
        for name, value in headers.items():
            head += [b"\r\n", name.encode(), b": ", value.encode()]
        head += [b"\r\nContent-Length: ", str(len(content)).encode(), b"\r\n\r\n", content]
        data = b"".join(head)
        async with origin.slots:
            try:
                async with asyncio.timeout(timeout):
                    return await self._exchange(origin, data)
            except TimeoutError:
                raise IngestHTTPError(f"no answer within {timeout:g}s") from None

    async def _exchange(self, origin: _Origin, data: bytes) -> IngestResponse:
        conn = origin.take_idle()
        if conn is not None:
            try:
                resp = await conn.request(data)
            except IngestHTTPError:
                conn.close()
                if conn.got_bytes:
                    raise
                # a kept-alive connection the server closed meanwhile: once more on a new one
            except BaseException:
                conn.close()
                raise
            else:
                origin.give_back(conn)
                return resp
        conn = await origin.connect(self.connect_timeout_s)
        try:
            resp = await conn.request(data)
        except BaseException:
            conn.close()
            raise
        origin.give_back(conn)
        return resp

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
        self._paths.clear()
        await asyncio.sleep(0)  # let the transports close


def proxied(url: str) -> bool:
    """Whether an ``HTTP(S)_PROXY`` environment setting applies to ``url`` (httpx's rule)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    with contextlib.suppress(Exception):
        return not urllib.request.proxy_bypass(parts.netloc)
    return True
