"""The shipper's HTTP client: aiohttp behind the few names the shipper reads.

Shipping is the runner's hottest path (at least one POST per run). httpx spends ~1.2 ms of
client CPU per request here (its connection pool polls every pooled socket on each
request); aiohttp ~0.06 ms (docs/runner.md, "Shipping client"). The shipper also accepts an
``httpx.AsyncClient`` (same ``post`` signature), which some tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from streamward.lua.inboxscripts import peek_from_wire
from streamward.lua.replies import InboxPeek

MAX_CONNECTIONS = 64
# coalescing (see IngestHTTP): requests in flight at once, and the most bytes of ingest
# bodies one batch request carries (well under the API's 1 MiB default body limit)
COALESCE_INFLIGHT = 2
COALESCE_MAX_BYTES = 512 * 1024
COALESCE_MAX_ITEMS = 256  # core.contract.INGEST_BATCH_MAX
# an API without the batch endpoint (older, mid rolling update) is asked again after this
BATCH_RETRY_S = 60.0
log = logging.getLogger("streamward.runner.ingest_http")
# below uvicorn's 5 s keep-alive: never reuse a connection the server may be closing
KEEPALIVE_S = 3.0


class IngestHTTPError(Exception):
    """The request got no HTTP answer (connect or read failure, timeout, bad answer)."""


@dataclass(slots=True)
class IngestResponse:
    """The part of an answer the shipper reads (httpx's names)."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


@dataclass(slots=True)
class _Pending:
    url: str
    content: bytes
    headers: dict[str, str]
    timeout: float
    future: asyncio.Future[IngestResponse] = field(repr=False)


class IngestHTTP:
    """``await post(url, content=..., headers=..., timeout=...)`` -> IngestResponse.

    Raises IngestHTTPError when no answer came (the shipper retries those; ingest is
    idempotent by seq, so a retried POST never duplicates an entry). Proxy settings
    (``HTTP(S)_PROXY``, ``NO_PROXY``) apply, as with httpx.

    ``coalesce``: the replica's shippers post through one client, each one batch at a time.
    Posts made in the same loop turn, or while ``COALESCE_INFLIGHT`` requests are out, leave
    together as one ``POST <url>/batch`` (the API stores them in one pipelined Redis round
    trip) and each caller gets the answer its post would have had alone. A lone post goes
    to ``<url>`` as before, so an idle replica adds no latency; under load the API serves
    one request for many runs instead of one per run (docs/performance.md). An API without
    the batch endpoint, or refusing the batch as a whole (413, 422), gets the posts one by
    one: the shipper sees exactly what it would see without coalescing.
    """

    def __init__(self, connect_timeout_s: float = 1.0, *, coalesce: bool = False) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.coalesce = coalesce
        self._session: aiohttp.ClientSession | None = None
        self._pending: list[_Pending] = []
        self._pump: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(COALESCE_INFLIGHT)
        self._sends: set[asyncio.Task[None]] = set()
        self._no_batch_until = 0.0  # monotonic: the API answered 404/405 to a batch

    def _open(self) -> aiohttp.ClientSession:
        # created on first use: a ClientSession belongs to the running loop
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # trust_env re-reads the proxy environment on every request (~0.23 ms of CPU
            # each): only when a proxy is configured at all
            trust_env=bool(urllib.request.getproxies_environment()),
            cookie_jar=aiohttp.DummyCookieJar(),  # the admin API sets no cookies
        )
        return self._session

    # httpx's signature (timeout included): the shipper calls either client
    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
    ) -> IngestResponse:
        if not self.coalesce or len(content) > COALESCE_MAX_BYTES // 2:
            return await self._post(url, content, headers, timeout)
        fut: asyncio.Future[IngestResponse] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(url, content, headers, timeout, fut))
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name="ingest coalescer")
        return await fut

    async def _run_pump(self) -> None:
        try:
            await asyncio.sleep(0)  # the other shippers woken in this loop turn post too
            while self._pending:
                await self._slots.acquire()  # while all are out, posts pile up: one batch
                group = self._take()
                if not group:  # every waiting shipper stopped
                    self._slots.release()
                    break
                task = asyncio.create_task(self._send_group(group))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
        finally:
            self._pump = None

    def _take(self) -> list[_Pending]:
        """The oldest posts of one url and token, within the batch limits (cancelled ones,
        whose shipper stopped, dropped)."""
        pending = [p for p in self._pending if not p.future.done()]
        if not pending:
            self._pending = []
            return []
        head = pending[0]
        group: list[_Pending] = []
        rest: list[_Pending] = []
        size = 0
        for p in pending:
            fits = len(group) < COALESCE_MAX_ITEMS and size + len(p.content) <= COALESCE_MAX_BYTES
            if fits and p.url == head.url and p.headers == head.headers:
                group.append(p)
                size += len(p.content)
            else:
                rest.append(p)
        self._pending = rest
        return group

    async def _send_group(self, group: list[_Pending]) -> None:
        try:
            await self._send_group_now(group)
        except BaseException as exc:  # closing, or a bug: no shipper may wait for ever
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("batch ingest: sending failed")
            for p in group:  # (those answered already are left alone)
                _settle(p, IngestHTTPError(f"batch not sent: {type(exc).__name__}: {exc}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._slots.release()

    async def _send_group_now(self, group: list[_Pending]) -> None:
        if len(group) == 1 or time.monotonic() < self._no_batch_until:
            await asyncio.gather(*(self._send_one(p) for p in group))
            return
        head = group[0]
        body = b'{"batches":[' + b",".join(p.content for p in group) + b"]}"
        try:
            resp = await self._post(f"{head.url}/batch", body, head.headers, head.timeout)
        except IngestHTTPError as exc:
            for p in group:
                _settle(p, exc)
            return
        if resp.status_code == 200:
            self._answer(group, resp)
        elif resp.status_code in (400, 403, 404, 405, 413, 422, 500):
            # no batch endpoint (an older API, or a proxy that allows only the single
            # path), the batch as a whole refused, or one batch failing the rest (500):
            # one by one, so each shipper gets its own post's answer
            if resp.status_code in (403, 404, 405):
                self._no_batch_until = time.monotonic() + BATCH_RETRY_S
            await asyncio.gather(*(self._send_one(p) for p in group))
        else:  # 401/408/429/502-504: what each post would have got; the shippers retry
            for p in group:
                _settle(p, resp)

    def _answer(self, group: list[_Pending], resp: IngestResponse) -> None:
        try:
            results = resp.json()["results"]
            answers = [IngestResponse(int(r["status"]), orjson.dumps(r["body"])) for r in results]
            if len(answers) != len(group):
                raise ValueError(f"{len(answers)} results for {len(group)} batches")
        except Exception as exc:  # not the API's answer: every post gets no answer
            log.warning("batch ingest: unreadable answer (%s)", exc)
            for p in group:
                _settle(p, IngestHTTPError(f"unreadable batch answer: {exc}"))
            return
        for p, answer in zip(group, answers, strict=True):
            _settle(p, answer)

    async def _send_one(self, p: _Pending) -> None:
        try:
            _settle(p, await self._post(p.url, p.content, p.headers, p.timeout))
        except IngestHTTPError as exc:
            _settle(p, exc)
        except Exception as exc:  # e.g. the session closed: the shipper retries it
            _settle(p, IngestHTTPError(f"{type(exc).__name__}: {exc}"))

    async def _post(
        self,
        url: str,
        content: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
    ) -> IngestResponse:
        return await self._request("POST", url, headers, timeout, content)

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
    ) -> IngestResponse:
        """A GET with the same errors as ``post`` (``ctx.transcript()``'s archive reads)."""
        return await self._request("GET", url, headers, timeout)

    async def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
        content: bytes | None = None,
    ) -> IngestResponse:
        session = self._session or self._open()
        limits = aiohttp.ClientTimeout(total=timeout, connect=self.connect_timeout_s)
        try:
            async with session.request(
                method, url, data=content, headers=headers, timeout=limits
            ) as resp:
                return IngestResponse(resp.status, await resp.read())
        except TimeoutError:
            raise IngestHTTPError(f"no answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise IngestHTTPError(f"cannot connect: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise IngestHTTPError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        for task in [self._pump, *self._sends]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for p in self._pending:
            _settle(p, IngestHTTPError("client closed"))
        self._pending = []
        if self._session is not None:
            await self._session.close()
            self._session = None


def _settle(p: _Pending, outcome: IngestResponse | IngestHTTPError) -> None:
    if p.future.done():  # the shipper stopped waiting (cancelled)
        return
    if isinstance(outcome, IngestHTTPError):
        p.future.set_exception(outcome)
    else:
        p.future.set_result(outcome)


def problem_code(resp: Any) -> str:
    """A problem answer's ``code`` ("" when it has none)."""
    with contextlib.suppress(Exception):
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("code", ""))
    return ""


def answer_peek(resp: Any) -> InboxPeek | None:
    """The inbox peek an accepted ingest's answer carries (``advance``: ingestAdvance-7);
    None when the API did not advance the inbox."""
    try:
        wire = resp.json().get("advance")
        return None if wire is None else peek_from_wire(wire)
    except Exception:  # unreadable: the owner advances itself (idempotent after this one)
        log.warning("ingest answer with an unreadable advance", exc_info=True)
        return None
