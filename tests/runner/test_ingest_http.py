"""The shipper's HTTP client (runner/ingest_http.py, aiohttp) against a scripted server, and
the shipper's linger policy (one request for a fast run, no wait for a slow run's start)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
import pytest

from streamward.lua.keys import Keys
from streamward.runner.ingest_http import IngestHTTP, IngestHTTPError
from streamward.runner.shipper import Shipper, ShipStopped

OK = b'{"accepted":1}'


class Server:
    """Answers each request with ``respond(n)`` (n = request count); counts connections."""

    def __init__(self, respond: Callable[[int], bytes | None]) -> None:
        self.respond = respond
        self.hang_up_after: set[int] = set()  # request numbers answered, then disconnected
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/admin/ingest"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                answer = self.respond(len(self.requests))
                if answer is None:  # hang up without answering
                    break
                writer.write(answer)
                await writer.drain()
                if (
                    b"connection: close" in answer.lower()
                    or len(self.requests) in self.hang_up_after
                ):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def plain(body: bytes = OK, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Callable[[int], bytes | None]], Any]]:
    servers: list[asyncio.Server] = []

    async def start(respond: Callable[[int], bytes | None]) -> Server:
        s = Server(respond)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s.server)
        return s

    yield start
    for srv in servers:
        srv.close()


async def post(http: IngestHTTP, url: str, body: bytes = b"{}", within: float = 2.0) -> Any:
    return await http.post(
        url, content=body, headers={"content-type": "application/json"}, timeout=within
    )


async def test_keeps_the_connection_alive_and_sends_a_well_formed_request(serve: Any) -> None:
    s = await serve(lambda n: plain())
    http = IngestHTTP()
    try:
        for _ in range(5):
            r = await post(http, s.url, b'{"x":1}')
            assert (r.status_code, r.json()) == (200, {"accepted": 1})
        # concurrent requests each take a connection; they are kept and reused afterwards
        await asyncio.gather(*(post(http, s.url) for _ in range(4)))
        await asyncio.gather(*(post(http, s.url) for _ in range(4)))
    finally:
        await http.aclose()
    assert s.connections == 4
    head, _, body = s.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /admin/ingest HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"7" and body == b'{"x":1}'
    assert headers[b"host"].startswith(b"127.0.0.1:")


async def test_reads_chunked_answers_and_honours_connection_close(serve: Any) -> None:
    chunked = (
        b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n"
        b'5\r\n{"cod\r\n11\r\ne":"stale_token"}\r\n0\r\n\r\n'
    )
    s = await serve(lambda n: chunked if n == 1 else plain(extra=b"connection: close\r\n"))
    http = IngestHTTP()
    try:
        r = await post(http, s.url)
        assert (r.status_code, r.json()) == (409, {"code": "stale_token"})
        assert r.text == '{"code":"stale_token"}'
        for _ in range(2):
            assert (await post(http, s.url)).status_code == 200
    finally:
        await http.aclose()
    assert s.connections == 2  # the chunked answer kept it; each close answer ended one


async def test_a_kept_connection_closed_by_the_server_is_replaced(serve: Any) -> None:
    # the server closes the connection after its first answer (as an idle timeout would)
    s = await serve(lambda n: plain())
    s.hang_up_after.add(1)
    http = IngestHTTP()
    try:
        assert (await post(http, s.url)).status_code == 200
        await asyncio.sleep(0.05)
        assert (await post(http, s.url)).status_code == 200  # on a new connection
    finally:
        await http.aclose()
    assert s.connections == 2 and len(s.requests) == 2


async def test_no_answer_is_an_ingest_http_error(serve: Any) -> None:
    s = await serve(lambda n: None)  # every connection dropped unanswered
    http = IngestHTTP()
    try:
        with pytest.raises(IngestHTTPError):
            await post(http, s.url)
        hang = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hang.wait()
            writer.close()

        quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = quiet.sockets[0].getsockname()[1]
        with pytest.raises(IngestHTTPError, match="no answer"):
            await post(http, f"http://127.0.0.1:{port}/x", within=0.1)
        hang.set()
        quiet.close()
        with pytest.raises(IngestHTTPError, match="cannot connect"):
            await post(http, f"http://127.0.0.1:{port}/x")
    finally:
        await http.aclose()


# -- the shipper's linger ---------------------------------------------------------------------


class Recorder:
    """A stand-in for the HTTP client: records each request's entry types, answers 200."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def post(self, url: str, *, content: bytes, headers: Any, **_: Any) -> Any:
        self.batches.append([e["type"] for e in orjson.loads(content)["entries"]])

        class R:
            status_code = 200

        return R()


def _shipper(rec: Recorder, linger_s: float = 0.005, **kw: Any) -> Shipper:
    shipper = Shipper(
        http=cast(Any, rec),
        url="http://api/ingest",
        admin_token=None,
        session=Keys().session("p", "s"),
        token=1,
        next_seq=1,
        can_write=lambda: True,
        linger_s=linger_s,
        **kw,
    )
    shipper.start()
    return shipper


async def test_a_fast_run_ships_as_one_request_and_its_end_does_not_linger() -> None:
    rec = Recorder()
    shipper = _shipper(rec, linger_s=5.0)  # a timed linger would show as a 5 s flush

    async def fast_run() -> None:
        await shipper.put("run_a", "run.started", {})
        await asyncio.sleep(0)  # a handler's own awaits: a few loop turns
        await shipper.put("run_a", "run.output", {"i": 0})
        await asyncio.sleep(0)
        await shipper.put("run_a", "run.completed", {"outputs": 1})

    await asyncio.wait_for(fast_run(), 1)
    await asyncio.wait_for(shipper.flush(), 1)
    await shipper.close()
    assert rec.batches == [["run.started", "run.output", "run.completed"]]


async def test_a_slow_run_start_ships_at_once_and_its_outputs_are_coalesced() -> None:
    rec = Recorder()
    shipper = _shipper(rec, linger_s=0.2)
    await shipper.put("run_a", "run.started", {})
    await asyncio.sleep(0.05)  # far less than the linger: the start did not wait for it
    assert rec.batches == [["run.started"]]
    for i in range(3):
        await shipper.put("run_a", "run.output", {"i": i})
        await asyncio.sleep(0.01)
    assert rec.batches == [["run.started"]]  # outputs linger to share a request
    await shipper.put("run_a", "run.completed", {"outputs": 3})
    await asyncio.wait_for(shipper.flush(), 0.1)  # the end cuts the linger short
    await shipper.close()
    assert rec.batches == [["run.started"], ["run.output"] * 3 + ["run.completed"]]


async def test_proxy_settings_apply_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's trust_env re-reads the environment on every request: on only when needed
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for env, trusted in (({}, False), ({"HTTPS_PROXY": "http://proxy:3128"}, True)):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        http = IngestHTTP()
        try:
            assert http._open().trust_env is trusted
        finally:
            await http.aclose()


class Flaky(Recorder):
    """Raises an unexpected error (a client bug, not a network failure) on the first request."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def post(self, url: str, *, content: bytes, headers: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("client bug")
        return await super().post(url, content=content, headers=headers, **kw)


async def test_an_unexpected_client_error_is_retried_not_fatal() -> None:
    rec = Flaky()
    shipper = _shipper(rec, linger_s=0)
    await shipper.put("run_a", "run.started", {})
    await asyncio.wait_for(shipper.flush(), 2)  # the backoff (<= 50 ms), then the retry
    await shipper.close()
    assert rec.calls == 2 and rec.batches == [["run.started"]]


async def test_a_crashed_sender_stops_the_shipper_and_wakes_its_waiters() -> None:
    stops: list[ShipStopped] = []
    shipper = _shipper(Recorder(), on_stop=stops.append)

    def broken() -> Any:
        raise AssertionError("a bug in the sender")

    shipper._take = broken  # type: ignore[method-assign]  # looked up when items arrive
    await shipper.put("run_a", "run.started", {})
    with pytest.raises(ShipStopped, match="shipper crashed"):
        await asyncio.wait_for(shipper.flush(), 2)  # woken, not left waiting forever
    assert len(stops) == 1 and "AssertionError" in str(stops[0])
    await shipper.close()


# -- coalescing (IngestHTTP(coalesce=True)) ---------------------------------------------------


def _batch_answer(request: bytes, statuses: list[int]) -> bytes:
    """The batch endpoint's answer to ``request``: item i gets ``statuses[i]``, and a body that
    names the item it answers (its ``n``), so a test sees who got what."""
    body = orjson.loads(request.partition(b"\r\n\r\n")[2])
    results = []
    for i, item in enumerate(body["batches"]):
        status = statuses[i % len(statuses)]
        answer: dict[str, Any] = {"n": item["n"]}
        if status != 200:
            answer["code"] = "stale_token"
        results.append({"status": status, "body": answer})
    return plain(orjson.dumps({"results": results}))


def _path(request: bytes) -> bytes:
    return request.split(b" ", 2)[1]


async def test_posts_of_one_loop_turn_leave_as_one_batch_and_each_gets_its_answer(
    serve: Any,
) -> None:
    s: Server

    def respond(n: int) -> bytes:
        return _batch_answer(s.requests[n - 1], [200, 409, 200])

    s = await serve(respond)
    http = IngestHTTP(coalesce=True)
    try:
        bodies = [orjson.dumps({"n": i}) for i in range(6)]
        answers = await asyncio.gather(*(post(http, s.url, b) for b in bodies))
    finally:
        await http.aclose()
    assert [_path(r) for r in s.requests] == [b"/admin/ingest/batch"]
    sent = orjson.loads(s.requests[0].partition(b"\r\n\r\n")[2])
    assert sent == {"batches": [{"n": i} for i in range(6)]}  # the bodies as posted, in order
    assert [(a.status_code, a.json()["n"]) for a in answers] == [
        (200 if i % 3 != 1 else 409, i) for i in range(6)
    ]
    assert answers[1].json()["code"] == "stale_token"


async def test_a_lone_post_goes_to_the_single_endpoint(serve: Any) -> None:
    s = await serve(lambda n: plain())
    http = IngestHTTP(coalesce=True)
    try:
        for _ in range(3):
            assert (await post(http, s.url, b'{"n":1}')).json() == {"accepted": 1}
    finally:
        await http.aclose()
    assert [_path(r) for r in s.requests] == [b"/admin/ingest"] * 3


async def test_an_api_without_the_batch_endpoint_gets_the_posts_one_by_one(serve: Any) -> None:
    not_found = plain(b'{"code":"not_found"}', 404)
    s: Server
    s = await serve(lambda n: not_found if b"/batch" in _path(s.requests[n - 1]) else plain())
    http = IngestHTTP(coalesce=True)
    try:
        first = await asyncio.gather(*(post(http, s.url, b'{"n":1}') for _ in range(3)))
        later = await asyncio.gather(*(post(http, s.url, b'{"n":1}') for _ in range(3)))
    finally:
        await http.aclose()
    assert all(a.status_code == 200 for a in first + later)
    paths = [_path(r) for r in s.requests]
    # one refused batch, then every post alone (the endpoint is not asked again for a while)
    assert paths == [b"/admin/ingest/batch"] + [b"/admin/ingest"] * 6


async def test_a_batch_refused_as_a_whole_is_retried_one_by_one(serve: Any) -> None:
    too_large = plain(b'{"code":"body_too_large"}', 413)
    s: Server
    s = await serve(lambda n: too_large if b"/batch" in _path(s.requests[n - 1]) else plain())
    http = IngestHTTP(coalesce=True)
    try:
        answers = await asyncio.gather(*(post(http, s.url, b'{"n":1}') for _ in range(4)))
        again = await asyncio.gather(*(post(http, s.url, b'{"n":1}') for _ in range(2)))
    finally:
        await http.aclose()
    assert all(a.status_code == 200 for a in answers + again)
    paths = [_path(r) for r in s.requests]
    # a 413 is about that batch: the next one is tried as a batch again
    assert paths.count(b"/admin/ingest/batch") == 2 and paths.count(b"/admin/ingest") == 6


async def test_a_failed_batch_answers_every_post_as_a_failure(serve: Any) -> None:
    unavailable = plain(b'{"code":"redis_unavailable"}', 503)
    s = await serve(lambda n: unavailable if n == 1 else None)
    http = IngestHTTP(coalesce=True)
    try:
        answers = await asyncio.gather(*(post(http, s.url, b'{"n":1}') for _ in range(3)))
        assert [a.status_code for a in answers] == [503] * 3  # the shippers back off, retry
        # no answer at all (the server hangs up): every post raises, none is answered twice
        outcomes = await asyncio.gather(
            *(post(http, s.url, b'{"n":1}') for _ in range(3)), return_exceptions=True
        )
    finally:
        await http.aclose()
    assert all(isinstance(o, IngestHTTPError) for o in outcomes)


async def test_a_cancelled_post_is_dropped_and_the_rest_still_ship(serve: Any) -> None:
    s: Server

    def respond(n: int) -> bytes:
        return _batch_answer(s.requests[n - 1], [200])

    s = await serve(respond)
    http = IngestHTTP(coalesce=True)
    try:
        tasks = [asyncio.create_task(post(http, s.url, orjson.dumps({"n": i}))) for i in range(3)]
        await asyncio.sleep(0)  # all three queued; the first then stops waiting
        tasks[0].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await http.aclose()
    assert isinstance(done[0], asyncio.CancelledError)
    assert [cast(Any, d).json()["n"] for d in done[1:]] == [1, 2]
    sent = orjson.loads(s.requests[0].partition(b"\r\n\r\n")[2])
    assert sent == {"batches": [{"n": 1}, {"n": 2}]}


async def test_a_post_failing_unexpectedly_reaches_its_shipper_instead_of_hanging(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await serve(lambda n: plain())
    http = IngestHTTP(coalesce=True)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Session is closed")

    monkeypatch.setattr(http, "_post", broken)
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(post(http, s.url) for _ in range(3)), return_exceptions=True), 5
        )
        lone = await asyncio.wait_for(asyncio.gather(post(http, s.url), return_exceptions=True), 5)
    finally:
        await http.aclose()
    # the shipper retries an IngestHTTPError, as it retries any failed post
    assert all(isinstance(o, IngestHTTPError) for o in [*outcomes, *lone])


async def test_a_batch_failing_as_a_whole_is_sent_one_by_one(serve: Any) -> None:
    s: Server

    def respond(n: int) -> bytes:
        if b"/batch" in _path(s.requests[n - 1]):
            return plain(b'{"code":"internal_error"}', 500)
        return plain(s.requests[n - 1].partition(b"\r\n\r\n")[2])  # echo the body

    s = await serve(respond)
    http = IngestHTTP(coalesce=True)
    try:
        answers = await asyncio.gather(*(post(http, s.url, b'{"n":%d}' % i) for i in range(3)))
    finally:
        await http.aclose()
    # one session's failure (500) does not fail the others: each gets its own answer
    assert [a.json() for a in answers] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [_path(r) for r in s.requests].count(b"/admin/ingest") == 3
