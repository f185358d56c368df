"""The shipper's HTTP client: aiohttp behind the few names the shipper reads.

Shipping is the runner's hottest path (at least one POST per run). httpx spends ~1.2 ms of
client CPU per request here (its connection pool polls every pooled socket on each
request); aiohttp ~0.06 ms (docs/runner.md, "Shipping client"). The shipper also accepts an
``httpx.AsyncClient`` (same ``post`` signature), which some tests use.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

MAX_CONNECTIONS = 64
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


class IngestHTTP:
    """``await post(url, content=..., headers=..., timeout=...)`` -> IngestResponse.

    Raises IngestHTTPError when no answer came (the shipper retries those; ingest is
    idempotent by seq, so a retried POST never duplicates an entry). Proxy settings
    (``HTTP(S)_PROXY``, ``NO_PROXY``) apply, as with httpx.
    """

    def __init__(self, connect_timeout_s: float = 1.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

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
        session = self._session or self._open()
        limits = aiohttp.ClientTimeout(total=timeout, connect=self.connect_timeout_s)
        try:
            async with session.post(url, data=content, headers=headers, timeout=limits) as resp:
                return IngestResponse(resp.status, await resp.read())
        except TimeoutError:
            raise IngestHTTPError(f"no answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise IngestHTTPError(f"cannot connect: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise IngestHTTPError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
