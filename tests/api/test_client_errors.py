"""The Python client's own error types and retries, against a live API (and a port where
nothing listens). Faults are injected by a transport wrapping the real one."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from streamward.client import (
    AsyncStreamwardClient,
    StreamwardAPIError,
    StreamwardClient,
    StreamwardError,
    StreamwardUnavailable,
)
from streamward.tools.server import free_port


class FailFirst(httpx.BaseTransport):
    """Fails the first ``n`` requests with ``exc``, then sends them for real; counts tries."""

    def __init__(self, n: int, exc: type[httpx.TransportError]) -> None:
        self.inner = httpx.HTTPTransport()
        self.n = n
        self.exc = exc
        self.tries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries <= self.n:
            raise self.exc("injected", request=request)
        return self.inner.handle_request(request)


class Busy503(httpx.BaseTransport):
    """Answers 503 with Retry-After 0 to the first ``n`` requests (as a Redis outage does)."""

    def __init__(self, n: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.n = n
        self.tries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries <= self.n:
            return httpx.Response(
                503,
                headers={"retry-after": "0", "content-type": "application/problem+json"},
                json={"code": "redis_unavailable", "detail": "injected"},
            )
        return self.inner.handle_request(request)


def test_api_down_is_streamward_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with StreamwardClient(url, retries=2) as client, pytest.raises(StreamwardUnavailable) as info:
        client.session("s1")
    err = info.value
    assert isinstance(err, StreamwardError)
    assert err.attempts == 3 and url in str(err) and "cannot be reached" in str(err)
    assert isinstance(err.__cause__, httpx.ConnectError)


async def test_async_api_down_is_streamward_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncStreamwardClient(url, retries=0) as client:
        with pytest.raises(StreamwardUnavailable) as info:
            await client.liveness("s1")
        with pytest.raises(StreamwardUnavailable):
            async for _ in client.stream("s1", input={"x": 1}):
                pass
    assert info.value.attempts == 1


async def test_idempotent_calls_retry_transport_failures(live_url: str) -> None:
    # the live server runs on this loop: the blocking client runs in a thread
    await asyncio.to_thread(_idempotent_calls_retry_transport_failures, live_url)


def _idempotent_calls_retry_transport_failures(live_url: str) -> None:
    flaky = FailFirst(2, httpx.ReadError)
    client = StreamwardClient(live_url, transport=flaky, retries=2)
    with client, pytest.raises(StreamwardAPIError) as info:
        client.session("nobody")  # reached the API on the third try: a real 404
    assert info.value.status == 404 and flaky.tries == 3


async def test_a_post_that_may_have_been_sent_is_not_repeated(live_url: str) -> None:
    # the live server runs on this loop: the blocking client runs in a thread
    await asyncio.to_thread(_a_post_that_may_have_been_sent_is_not_repeated, live_url)


def _a_post_that_may_have_been_sent_is_not_repeated(live_url: str) -> None:
    flaky = FailFirst(1, httpx.ReadError)
    with (
        StreamwardClient(live_url, transport=flaky, retries=3) as client,
        pytest.raises(StreamwardUnavailable),
    ):
        client.invoke("s1", {"text": "once"})
    assert flaky.tries == 1  # the server may have taken it: sending it again could run it twice
    with StreamwardClient(live_url, transport=FailFirst(1, httpx.ReadError)) as client:
        accepted = client.invoke("s1", {"text": "keyed"}, idempotency_key="k1")
    assert accepted.session_id == "s1"  # with an idempotency key a repeat is safe
    with StreamwardClient(live_url, transport=FailFirst(2, httpx.ConnectError)) as client:
        assert client.invoke("s2", {"text": "x"}).session_id == "s2"  # never sent: retried


async def test_503_is_retried_for_reads_only(live_url: str) -> None:
    # the live server runs on this loop: the blocking client runs in a thread
    await asyncio.to_thread(_503_is_retried_for_reads_only, live_url)


def _503_is_retried_for_reads_only(live_url: str) -> None:
    busy = Busy503(1)
    client = StreamwardClient(live_url, transport=busy, retries=2)
    with client, pytest.raises(StreamwardAPIError) as missing:
        client.session("s1")
    assert missing.value.status == 404 and busy.tries == 2  # the retry reached the API
    client = StreamwardClient(live_url, transport=Busy503(1), retries=2)
    with client, pytest.raises(StreamwardAPIError) as info:
        client.invoke("s1", {"text": "x"})
    assert info.value.status == 503 and info.value.code == "redis_unavailable"
