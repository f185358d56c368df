"""The peers of a detached invoke in ``streamward bench invoke``: Redis job queues a service
could use instead (saq, arq with its default and a tuned ``poll_delay``, Celery with its Redis
broker and thread pool), measured in the same run, on the same machine, by the same callers.

Each peer gets its own throwaway ``redis-server`` and 2 worker processes
(``peer_worker.py``). Its one job does ``LPUSH started:<id>`` as its first act; the caller
enqueues it and waits in ``BLPOP started:<id>``: the round trip is "tell me it started", as a
detached invoke's 202 is. The callers are the invoke bench's: ``concurrency`` of them in a
closed loop, each caller's first handshake sent by all at once (**cold**: the first job of
fresh workers on a new queue; a peer has no session lease to take, so this is the burst of
the first jobs, not a lease acquisition), the next one again by all at once (burst, left out
of warm as for streamward), every later one warm. started/s counts burst + warm over the
warm phase's wall time, as for streamward.

A peer whose library is not installed is skipped and reported as such; one that fails (a
worker that dies, a handshake that never starts) is reported with its error: neither stops
the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from streamward.tools.bench.invoke import CpuMeter, Latency
from streamward.tools.bench.peer_worker import READY_KEY, started_key
from streamward.tools.server import RedisServer, wait_ready

WORKERS = 2
HANDSHAKE_TIMEOUT_S = 30
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Peer:
    name: str  # what --peers takes
    label: str  # {v}: the installed version
    dist: str  # the distribution whose import name is ``module``
    module: str


PEERS: tuple[Peer, ...] = (
    Peer("saq", "saq {v}", "saq", "saq"),
    Peer("arq-tuned", "arq {v}, poll_delay 0.01", "arq", "arq"),
    Peer("arq", "arq {v}, default poll_delay", "arq", "arq"),
    Peer("celery", "Celery {v} (Redis broker, thread pool)", "celery", "celery"),
)
NAMES = tuple(p.name for p in PEERS)


@dataclass
class PeerResult:
    name: str
    label: str
    version: str
    workers: int
    slots_per_worker: int
    warm: Latency
    cold: Latency
    burst: Latency | None
    started_per_s: float
    # CPU ms per warm handshake, by process group (workers, redis, client) and in total:
    # the figure a single run measures reliably on a noisy machine, unlike its throughput
    cpu_ms_per_invoke: dict[str, float] = field(default_factory=dict)
    # streamward's figure / this peer's: < 1 is streamward faster for times, > 1 for started/s
    ratios: dict[str, float] = field(default_factory=dict)


def select(names: Sequence[str] | None) -> tuple[list[Peer], dict[str, str]]:
    """(peers to run, {name: why skipped}); None or empty = every peer; "none" = no peer."""
    wanted = [n.strip() for raw in names or () for n in raw.split(",") if n.strip()]
    if wanted == ["none"]:
        return [], {}
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(NAMES)}")
    chosen = [p for p in PEERS if not wanted or p.name in wanted]
    run: list[Peer] = []
    skipped: dict[str, str] = {}
    for p in chosen:
        if importlib.util.find_spec(p.module) is None:
            skipped[p.name] = f"{p.dist} is not installed (see docs/BENCHMARKS.md, Reproduce)"
        else:
            run.append(p)
    return run, skipped


# -- enqueueing, one way per system ----------------------------------------------------------


Enqueue = Callable[[str], Awaitable[None]]


@contextlib.asynccontextmanager
async def _enqueuer(peer: Peer, url: str, callers: int) -> Any:
    """An async ``enqueue(hid)`` with the peer's own client, as a service would call it."""
    if peer.module == "saq":
        from saq import Queue

        queue = Queue.from_url(url)
        await queue.connect()

        async def saq_enqueue(hid: str) -> None:
            await queue.enqueue("handshake", hid=hid)

        try:
            yield saq_enqueue
        finally:
            await queue.disconnect()
    elif peer.module == "arq":
        from arq.connections import RedisSettings, create_pool

        pool = await create_pool(RedisSettings.from_dsn(url))

        async def arq_enqueue(hid: str) -> None:
            await pool.enqueue_job("handshake", hid)

        try:
            yield arq_enqueue
        finally:
            await pool.aclose()
    else:
        from celery import Celery

        # Celery's client is synchronous: one thread per caller, and a broker connection
        # each, so no caller waits for another's
        app = Celery("peerbench", broker=url)
        app.conf.update(task_ignore_result=True, broker_pool_limit=callers)
        threads = ThreadPoolExecutor(max_workers=callers)
        loop = asyncio.get_running_loop()

        async def celery_enqueue(hid: str) -> None:
            await loop.run_in_executor(threads, lambda: app.send_task("handshake", args=[hid]))

        try:
            yield celery_enqueue
        finally:
            threads.shutdown(wait=True)
            app.close()


# -- the callers --------------------------------------------------------------------------


async def _handshakes(
    peer: Peer, url: str, concurrency: int, requests: int, cpu: CpuMeter | None = None
) -> tuple[Latency, Latency, Latency | None, float]:
    """(warm, cold, burst, started/s): the invoke bench's caller pattern, against a peer;
    ``cpu`` (when given) measures the warm phase, as for streamward."""
    # a connection per BLPOP; the socket waits out the BLPOP timeout, which decides
    r = aioredis.Redis.from_url(url, max_connections=None, socket_timeout=HANDSHAKE_TIMEOUT_S + 5)
    async with _enqueuer(peer, url, concurrency) as enqueue:

        async def handshake() -> float:
            hid = uuid.uuid4().hex
            t0 = time.perf_counter()
            await enqueue(hid)
            got = await r.blpop([started_key(hid)], timeout=HANDSHAKE_TIMEOUT_S)
            if got is None:
                raise RuntimeError(f"job {hid} did not start in {HANDSHAKE_TIMEOUT_S} s")
            return time.perf_counter() - t0

        try:
            cold = await asyncio.gather(*(handshake() for _ in range(concurrency)))
            per = [
                requests // concurrency + (i < requests % concurrency) for i in range(concurrency)
            ]
            warm: list[float] = []
            burst: list[float] = []

            async def caller(n: int) -> None:
                for k in range(n):
                    (burst if k == 0 else warm).append(await handshake())

            if cpu is not None:
                cpu.start()
            t0 = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in per))
            wall_s = time.perf_counter() - t0
            if cpu is not None:
                cpu.stop()
        finally:
            await r.aclose()
    per_s = round((len(warm) + len(burst)) / wall_s, 1) if wall_s > 0 else 0.0
    if not warm:
        return Latency.of(burst), Latency.of(list(cold)), None, per_s
    return Latency.of(warm), Latency.of(list(cold)), Latency.of(burst), per_s


def _start_workers(peer: Peer, url: str, slots: int, log: Any) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "streamward.tools.bench.peer_worker", peer.name, url, str(slots)]
    return [
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(WORKERS)
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_peer(
    peer: Peer,
    concurrency: int,
    requests: int,
    run_loop: Callable[[Any], Any],
) -> PeerResult:
    """One peer, on its own redis-server and WORKERS worker processes (stopped after)."""
    # callers spread over the workers: a slot for each, so no handshake waits for a slot
    slots = max(1, math.ceil(concurrency / WORKERS))
    with (
        RedisServer() as server,
        tempfile.TemporaryFile() as log,
    ):
        procs = _start_workers(peer, server.url, slots, log)
        try:
            sync = redis.Redis.from_url(server.url)

            def exited() -> str | None:
                if all(p.poll() is None for p in procs):
                    return None
                log.seek(0)
                return log.read().decode(errors="replace")[-2000:]

            wait_ready(
                lambda: int(sync.get(READY_KEY) or 0) >= WORKERS,
                what=f"{peer.name} workers",
                timeout_s=READY_TIMEOUT_S,
                exited=exited,
            )
            sync.close()
            groups = {"workers": [p.pid for p in procs]}
            if server.proc is not None:
                groups["redis"] = [server.proc.pid]
            cpu = CpuMeter(groups)
            warm, cold, burst, per_s = run_loop(
                _handshakes(peer, server.url, concurrency, requests, cpu)
            )
        finally:
            _stop(procs)
    version = importlib.metadata.version(peer.dist)
    return PeerResult(
        name=peer.name,
        label=peer.label.format(v=version),
        version=version,
        workers=WORKERS,
        slots_per_worker=slots,
        warm=warm,
        cold=cold,
        burst=burst,
        started_per_s=per_s,
        cpu_ms_per_invoke=cpu.per_invoke_ms(warm.samples + (burst.samples if burst else 0)),
    )


# issue 17's targets, as streamward's figure ÷ the best peer's
RATIO_TARGETS: dict[str, tuple[str, float]] = {
    "warm_p50": ("≤", 1.0),
    "warm_p99": ("≤", 1.2),
    "started_per_s": ("≥", 1.0),
}


def _div(a: float, b: float, if_zero: float = math.inf) -> float:
    return a / b if b else if_zero


def ratio_met(figure: str, ratio: float) -> bool:
    how, bound = RATIO_TARGETS[figure]
    return ratio <= bound if how == "≤" else ratio >= bound


def compare(warm: Latency, cold: Latency, per_s: float, peers: list[PeerResult]) -> dict[str, Any]:
    """streamward against every peer (in each peer's ``ratios``) and against the best peer
    of each figure; targets from issue 17. {} when no peer ran."""
    for p in peers:
        p.ratios = {
            "warm_p50": round(warm.p50_ms / p.warm.p50_ms, 3),
            "warm_p99": round(warm.p99_ms / p.warm.p99_ms, 3),
            "cold_p50": round(cold.p50_ms / p.cold.p50_ms, 3),
            "cold_p99": round(cold.p99_ms / p.cold.p99_ms, 3),
            "started_per_s": round(per_s / p.started_per_s, 3) if p.started_per_s else 0.0,
        }
    if not peers:
        return {}

    def best(key: Callable[[PeerResult], float], high: bool = False) -> PeerResult:
        return (max if high else min)(peers, key=key)

    def row(peer: PeerResult, peer_value: float, ours: float, target: str, met: bool | None) -> Any:
        ratio = ours / peer_value if peer_value else 0.0
        return {
            "peer": peer.name,
            "peer_value": peer_value,
            "streamward": ours,
            "ratio": round(ratio, 3),
            "target": target,
            "met": met,
        }

    p50, p99 = best(lambda p: p.warm.p50_ms), best(lambda p: p.warm.p99_ms)
    fast, cold50 = best(lambda p: p.started_per_s, high=True), best(lambda p: p.cold.p50_ms)
    return {
        "warm_p50": row(
            p50,
            p50.warm.p50_ms,
            warm.p50_ms,
            "≤ 1x",
            ratio_met("warm_p50", _div(warm.p50_ms, p50.warm.p50_ms)),
        ),
        "warm_p99": row(
            p99,
            p99.warm.p99_ms,
            warm.p99_ms,
            "≤ 1.2x",
            ratio_met("warm_p99", _div(warm.p99_ms, p99.warm.p99_ms)),
        ),
        "started_per_s": row(
            fast,
            fast.started_per_s,
            per_s,
            "≥ 1x",
            ratio_met("started_per_s", _div(per_s, fast.started_per_s, 0.0)),
        ),
        "cold_p50": row(cold50, cold50.cold.p50_ms, cold.p50_ms, "-", None),
        # not against a peer: streamward's own cold p50 ÷ its warm p50
        "cold_over_warm_p50": {
            "streamward": round(cold.p50_ms / warm.p50_ms, 3),
            "target": "≤ 2x",
            "met": cold.p50_ms <= 2 * warm.p50_ms,
        },
    }
