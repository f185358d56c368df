"""Slow clients against a real ``streamward api`` process: trickled headers and bodies are cut
with 408 within their deadline, the public listener sheds load past its connection limit, and
the admin listener (probes, the runners' ingest) keeps answering meanwhile. Also: the API
refuses to serve /v1 without tokens on a non-loopback bind unless told to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.server import RedisServer, free_port, wait_ready

SLOW = 200  # slow connections: well past the public limit below
LIMIT = 50
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
# a deadline is kept when the cut comes before it plus this (a loaded 2-core machine)
SLACK_S = 8.0


def start_api(fleet: Fleet) -> tuple[Proc, int]:
    admin_port = free_port()
    proc = fleet.start_api(
        env={
            "STREAMWARD_ADMIN_PORT": str(admin_port),
            "STREAMWARD_LIMIT_CONCURRENCY": str(LIMIT),
            "STREAMWARD_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "STREAMWARD_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "STREAMWARD_START_TIMEOUT_S": "0",  # detached invokes answer at once
        }
    )
    return proc, admin_port


async def trickle(port: int, head: bytes, drip: bytes, stop: asyncio.Event) -> tuple[bytes, float]:
    """Send ``head``, then ``drip`` a byte at a time until the server answers or closes;
    returns what it answered and how long the connection lived."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = b""
    try:
        for i in range(10_000):
            if stop.is_set():
                break
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.5)
                break  # an answer, or b"" for a close
            except TimeoutError:
                writer.write(drip[i % len(drip) : i % len(drip) + 1])
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return answer, time.monotonic() - started


def problem_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)


async def test_slow_headers_are_cut_and_the_admin_listener_stays_usable(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    api, admin_port = start_api(fleet)
    admin_url = f"http://127.0.0.1:{admin_port}"
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys()
    store, streams = LeaseStore(client, keys), Streams(client, keys)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            # an input and its lease before the flood; its run.started is shipped during it
            r = await http.post(f"{api.url}/v1/sessions/s1/invoke", json={"mode": "detached"})
            assert r.status_code == 202, r.text
            await store.register_replica("replica-a", "inc-a", 60_000)
            lease = await store.acquire(keys.session("default", "s1"), "replica-a", "inc-a", 60_000)
            [item] = await streams.read_inbox(keys.session("default", "s1"), count=10)

            stop = asyncio.Event()
            head = b"POST /v1/sessions/x/invoke HTTP/1.1\r\nHost: api\r\n"
            flood = [
                asyncio.create_task(trickle(api.port or 0, head, b"X-Slow: abcdefgh\r\n", stop))
                for _ in range(SLOW)
            ]
            try:
                await asyncio.sleep(0.5)  # all connected, none done
                # the public listener is past its limit: it sheds load with 503
                shed = await http.get(f"{api.url}/livez")
                assert shed.status_code == 503
                # the admin listener answers the probes and the runners' ingest
                assert (await http.get(f"{admin_url}/livez")).status_code == 200
                ingest = await http.post(
                    f"{admin_url}/admin/sessions/transcripts/ingest",
                    headers=admin,
                    json={
                        "project": "default",
                        "session_id": "s1",
                        "run_id": item.run_id,
                        "token": lease.token,
                        "entries": [
                            {
                                "seq": 1,
                                "type": "run.started",
                                "data": {"replica_id": "replica-a", "attempt": 1, "input": None},
                            }
                        ],
                    },
                )
                assert ingest.status_code == 200, ingest.text
                assert ingest.json()["accepted"] == 1
                # only /admin, probes and metrics on the admin port
                public = await http.get(f"{admin_url}/v1/sessions/s1")
                assert public.status_code == 404 and public.json()["code"] == "not_on_admin_port"
                results = await asyncio.wait_for(asyncio.gather(*flood), HEADER_TIMEOUT_S + SLACK_S)
            finally:
                stop.set()
                for t in flood:
                    t.cancel()
            for answer, lived_s in results:
                assert lived_s < HEADER_TIMEOUT_S + SLACK_S
                status, body = problem_of(answer)
                assert status == 408 and body["code"] == "request_timeout", body
            # the flood is gone: the public listener answers again
            assert (await http.get(f"{api.url}/livez")).status_code == 200
    finally:
        await client.aclose()
    assert api.alive()


async def test_a_slow_body_is_cut_with_408(fleet: Fleet) -> None:
    api, _ = start_api(fleet)
    head = (
        b"POST /v1/sessions/s1/invoke HTTP/1.1\r\nHost: api\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    answer, lived_s = await asyncio.wait_for(
        trickle(api.port or 0, head, b" ", asyncio.Event()), BODY_TIMEOUT_S + SLACK_S
    )
    status, body = problem_of(answer)
    assert status == 408 and body["code"] == "request_timeout", body
    assert "body" in str(body["detail"])
    assert lived_s < BODY_TIMEOUT_S + SLACK_S
    # the connection closed after the 408 and the process serves on
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{api.url}/livez")).status_code == 200


async def test_an_idle_connection_is_cut_at_the_header_deadline(fleet: Fleet) -> None:
    api, _ = start_api(fleet)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port or 0)
    try:
        answer = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + SLACK_S)
    finally:
        writer.close()
    assert problem_of(answer)[0] == 408
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9


def _api(redis_url: str, *args: str, tokens: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWARD_")}
    env["STREAMWARD_REDIS_URL"] = redis_url
    if tokens is not None:
        env["STREAMWARD_API_TOKENS"] = tokens
    return subprocess.Popen(
        [sys.executable, "-m", "streamward.tools", "api", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_no_tokens_on_a_non_loopback_bind_exits_2(redis_server: RedisServer) -> None:
    proc = _api(redis_server.url, "--host", "0.0.0.0", "--port", str(free_port()))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "--insecure-no-auth" in lines[0], err


@pytest.mark.parametrize(
    ("args", "tokens"),
    [
        (["--host", "0.0.0.0", "--insecure-no-auth"], None),
        (["--host", "0.0.0.0"], '{"tok-1": "p1"}'),
        (["--host", "127.0.0.1"], None),  # dev: loopback needs no tokens
    ],
)
def test_the_api_starts_when_told_tokens_or_loopback(
    redis_server: RedisServer, args: list[str], tokens: str | None
) -> None:
    port = free_port()
    proc = _api(redis_server.url, *args, "--port", str(port), tokens=tokens)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_ready(
            ready,
            what="API",
            timeout_s=30,
            exited=lambda: None if proc.poll() is None else f"exit {proc.returncode}",
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
