"""``streamward bench invoke``: detached invoke latency and admin ingest throughput.

Measured in one run, on one throwaway ``redis-server``, one ``streamward api`` and
``--runners`` ``streamward runner`` processes (echo handler; default 1: streamward's two
server processes against each peer's two workers), each figure beside a raw-Redis baseline:

* **detached invoke round trip**: ``POST /v1/sessions/{id}/invoke`` (mode detached) until the
  202 that names the run's owner, i.e. API enqueue -> mail/work -> runner claims and starts
  the run -> ``run.started`` ingested through the API -> the API answers. Each of
  ``concurrency`` callers owns one session and invokes it in a loop (warm: the owner is known
  and mailed). The first invoke of each session (cold: work queue + lease acquisition) is
  reported separately, and so is the next one (burst: all callers send it at the same instant
  once the cold ones are answered, so it queues behind the whole burst). **Baseline**: the
  same hand-off done with raw Redis and no HTTP: the caller XADDs a request, a responder
  XREADs it and XADDs a reply, the caller's XREAD BLOCK gets it: two stream hops, the floor
  any Redis-mediated "tell me it started" can reach.
* **ingest throughput**: entries/s through ``POST /admin/sessions/transcripts/ingest`` in
  batches of 100 (fenced, idempotent Lua append), 16 sessions in parallel. **Baseline**: the
  same entries written with one plain XADD per entry, pipelined per batch of 100, same
  parallelism.

The warm invokes are a **closed loop**: each caller sends its next invoke when the last one
answered, so at ``concurrency`` callers the round trip is bounded below by queueing for the
CPU: ``concurrency x CPU per invoke / cores``. The bench therefore also reports the CPU
each process spent per warm invoke (API, runners, Redis, and this load generator, which
runs on the same machine: a minimal HTTP/1.1 client on uvloop), the throughput, that floor,
and the latency of a single caller (no queueing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import httpx
import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.tools.bench.archive import (
    ArchiveFigures,
    LagSampler,
    measure_drain,
    process_tree,
)
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer

if TYPE_CHECKING:
    from streamward.tools.bench.rounds import SystemRound

TARGET_P50_MS = 15.0
TARGET_P99_MS = 60.0
TARGET_INGEST_EPS = 30_000.0
# --runners: more would measure how many processes 2 cores can switch between, not a trip
MAX_RUNNERS = 8
INGEST_BATCH = 100
INGEST_SESSIONS = 16
INGEST_ENTRIES = 200_000
BENCH_REPLICA = "bench-shipper"
SINGLE_CALLER_REQUESTS = 200
T = TypeVar("T")


@dataclass
class Latency:
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ms = sorted(s * 1000 for s in seconds)
        return cls(len(ms), _pct(ms, 50), _pct(ms, 99), statistics.fmean(ms), ms[-1])


@dataclass
class Results:
    concurrency: int
    requests: int
    invoke: Latency
    invoke_cold: Latency
    invoke_raw: Latency
    invoke_statuses: dict[str, int]
    ingest_entries_per_s: float
    ingest_raw_entries_per_s: float
    ingest_entries: int
    p50_met: bool
    p99_met: bool
    ingest_met: bool
    # added later: defaults keep older constructors (and readers of older JSON) working
    invoke_single: Latency | None = None  # one caller, no queueing
    # each caller's first warm invoke, sent by all at the same instant (see bench_invoke)
    invoke_burst: Latency | None = None
    invokes_per_s: float = 0.0  # warm phase throughput
    # CPU ms per warm invoke by process: api, runners, redis, client (this process), total
    cpu_ms_per_invoke: dict[str, float] = field(default_factory=dict)
    cores: int = 0
    # concurrency x total CPU per invoke / cores: the p50 a closed loop cannot beat here
    closed_loop_floor_ms: float = 0.0
    # the Redis job queues measured in the same run (bench/peers.py), and the ratios
    peers: list[Any] = field(default_factory=list)  # peers.PeerResult
    peers_skipped: dict[str, str] = field(default_factory=dict)
    peers_failed: dict[str, str] = field(default_factory=dict)
    versus_best_peer: dict[str, Any] = field(default_factory=dict)
    # with --archiver: the record's lag and throughput while the bench ran (bench/archive.py)
    archive: ArchiveFigures | None = None
    # with --rounds N > 1 (bench/rounds.py): the warm, cold, burst, throughput and CPU
    # figures above and every peer's are medians over N rounds, and each round's own figures
    # are here; the single caller, raw baselines and ingest are round 1's
    rounds: int = 1
    round_figures: list[dict[str, Any]] = field(default_factory=list)
    # runner processes beside the one API (results from before --runners had 2), and how
    # many of them the answers named as their run's owner (round 1)
    runners: int = 1
    runners_answering: int = 0

    @property
    def invoke_ratio_p50(self) -> float:
        return self.invoke.p50_ms / self.invoke_raw.p50_ms

    @property
    def ingest_ratio(self) -> float:
        if not self.ingest_raw_entries_per_s:  # not measured (the record on)
            return 0.0
        return self.ingest_entries_per_s / self.ingest_raw_entries_per_s


def _pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_ms) - 1, round(p / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[k]


async def _gather_limited(n: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


# -- CPU accounting ------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """CPU seconds each named process group spends between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._t0: dict[str, float] = {}
        self._wall0 = 0.0
        self.spent_s: dict[str, float] = {}
        self.wall_s = 0.0

    def _now(self) -> dict[str, float]:
        out = {g: sum(_proc_cpu_s(p) for p in pids) for g, pids in self.groups.items()}
        out["client"] = _self_cpu_s()
        return out

    def start(self) -> None:
        self._t0 = self._now()
        self._wall0 = time.perf_counter()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        now = self._now()
        self.spent_s = {g: now[g] - self._t0[g] for g in now}

    def per_invoke_ms(self, n: int) -> dict[str, float]:
        out = {g: round(s * 1000 / n, 3) for g, s in self.spent_s.items()}
        out["total"] = round(sum(self.spent_s.values()) * 1000 / n, 3)
        return out


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the bench's own loop on uvloop when installed: the load generator shares the
    machine with what it measures, so it should cost as little CPU as it can."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- detached invoke ---------------------------------------------------------------------------


async def bench_invoke(
    api_url: str,
    concurrency: int,
    requests: int,
    run_tag: str,
    cpu: CpuMeter | None = None,
    owners: set[str] | None = None,
) -> tuple[Latency, Latency, dict[str, int], Latency | None]:
    """(warm, cold, status counts, burst) of detached invokes; ``cpu`` (when given) measures
    the warm phase only; ``owners`` (when given) gets the replica id of each answer's owner.

    Cold: the first invoke of each session (all callers at once). Burst: each caller's next
    invoke, which all callers send at the same instant when the cold ones are answered, so it
    queues behind the whole burst. Warm: every later one, the callers then running free. The
    burst is reported apart from the steady state (None when no caller has a later invoke).
    """
    statuses: dict[str, int] = {}
    body = orjson.dumps({"input": {"text": "bench", "chunks": 1}, "mode": "detached"})
    headers = {"Content-Type": "application/json"}
    # aiohttp, not httpx: with 50 callers on a small machine httpx's per-request CPU (~1 ms)
    # would dominate what is measured; one kept-alive connection per caller
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def invoke(session: str) -> float:
        t0 = time.perf_counter()
        async with http.post(
            f"{api_url}/v1/sessions/{session}/invoke", data=body, headers=headers
        ) as resp:
            status, reply = resp.status, await resp.read()
        dt = time.perf_counter() - t0
        if status != 202:
            raise RuntimeError(f"invoke answered {status}: {reply[:300]!r}")
        doc = orjson.loads(reply)
        name = str(doc["status"])
        statuses[name] = statuses.get(name, 0) + 1
        if owners is not None and doc.get("owner"):
            owners.add(str(doc["owner"]["replica_id"]))
        return dt

    try:
        sessions = [f"bench-{run_tag}-{i}" for i in range(concurrency)]
        cold = await asyncio.gather(*(invoke(s) for s in sessions))
        statuses.clear()
        per_worker = [
            requests // concurrency + (i < requests % concurrency) for i in range(concurrency)
        ]
        warm: list[float] = []
        burst: list[float] = []

        async def worker(session: str, n: int) -> None:
            for k in range(n):
                (burst if k == 0 else warm).append(await invoke(session))

        if cpu is not None:
            cpu.start()
        await asyncio.gather(*(worker(s, n) for s, n in zip(sessions, per_worker, strict=True)))
        if cpu is not None:
            cpu.stop()
    finally:
        await http.close()
    if not warm:  # one invoke per caller: the burst is all there is
        return Latency.of(burst), Latency.of(list(cold)), statuses, None
    return Latency.of(warm), Latency.of(list(cold)), statuses, Latency.of(burst)


async def bench_invoke_raw(redis_url: str, concurrency: int, requests: int) -> Latency:
    """Two-hop request/reply over raw Redis streams (no HTTP, no scripts); like the warm
    invokes, without each caller's first round trip (all callers send it at once)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=None)
    tag = uuid.uuid4().hex[:8]
    req_key = f"rawbench:{tag}:req"
    stop = asyncio.Event()

    async def responder() -> None:
        last = "$"
        while not stop.is_set():
            reply: Any = await client.xread({req_key: last}, count=500, block=100)
            for _, items in reply or []:
                pipe = client.pipeline(transaction=False)
                for entry_id, fields in items:
                    last = entry_id
                    pipe.xadd(fields["reply_to"], {"status": "running", "req": entry_id})
                await pipe.execute()

    async def caller(i: int, n: int, out: list[float]) -> None:
        reply_key = f"rawbench:{tag}:reply:{i}"
        last = "0-0"
        for k in range(n):
            t0 = time.perf_counter()
            await client.xadd(req_key, {"reply_to": reply_key, "input": '{"text":"bench"}'})
            while True:
                got: Any = await client.xread({reply_key: last}, count=1, block=5000)
                if got:
                    last = got[0][1][0][0]
                    break
            if k > 0 or n == 1:  # as for the invokes: the callers' first, joint burst apart
                out.append(time.perf_counter() - t0)

    task = asyncio.create_task(responder())
    await asyncio.sleep(0.05)  # the responder's first XREAD "$" must be in place
    samples: list[float] = []
    per = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    try:
        await asyncio.gather(*(caller(i, n, samples) for i, n in enumerate(per)))
    finally:
        stop.set()
        await task
        await client.aclose()
    return Latency.of(samples)


# -- ingest -------------------------------------------------------------------------------


def _entries(start_seq: int, n: int) -> list[dict[str, Any]]:
    return [
        {"seq": start_seq + k, "type": "run.output", "data": {"text": "bench", "i": start_seq + k}}
        for k in range(n)
    ]


async def bench_ingest(api_url: str, redis_url: str, admin_token: str, total: int) -> float:
    """Entries/s through the admin ingest endpoint, batches of 100, 16 sessions in parallel."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = LeaseStore(client, Keys())
    incarnation = uuid.uuid4().hex
    await store.register_replica(BENCH_REPLICA, incarnation, 600_000)
    tag = uuid.uuid4().hex[:8]
    tokens: dict[str, int] = {}
    for i in range(INGEST_SESSIONS):
        sid = f"ingest-{tag}-{i}"
        lease = await store.acquire(
            store.keys.session("default", sid), BENCH_REPLICA, incarnation, 600_000
        )
        tokens[sid] = lease.token
    per_session = total // INGEST_SESSIONS
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    # pre-serialise the bodies: the figure is the server's, not this client's JSON encoding
    bodies = {
        sid: [
            orjson.dumps(
                {
                    "session_id": sid,
                    "run_id": "run_bench",
                    "token": tok,
                    "entries": _entries(seq, INGEST_BATCH),
                }
            )
            for seq in range(1, per_session + 1, INGEST_BATCH)
        ]
        for sid, tok in tokens.items()
    }
    limits = httpx.Limits(max_connections=INGEST_SESSIONS + 4)
    async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=60) as http:

        async def ship(sid: str) -> int:
            n = 0
            for body in bodies[sid]:
                r = await http.post(
                    "/admin/sessions/transcripts/ingest", content=body, headers=headers
                )
                if r.status_code != 200:
                    raise RuntimeError(f"ingest answered {r.status_code}: {r.text[:300]}")
                n += int(orjson.loads(r.content)["accepted"])
            return n

        t0 = time.perf_counter()
        accepted = sum(await asyncio.gather(*(ship(s) for s in tokens)))
        dt = time.perf_counter() - t0
    await client.aclose()
    if accepted != per_session * INGEST_SESSIONS:
        raise RuntimeError(f"ingest accepted {accepted} of {per_session * INGEST_SESSIONS}")
    return accepted / dt


async def bench_ingest_raw(redis_url: str, total: int) -> float:
    """Entries/s with one XADD per entry, pipelined per batch of 100, 16 streams in parallel."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    tag = uuid.uuid4().hex[:8]
    per_session = total // INGEST_SESSIONS

    async def ship(i: int) -> int:
        key = f"rawbench:{tag}:log:{i}"
        n = 0
        for seq in range(1, per_session + 1, INGEST_BATCH):
            pipe = client.pipeline(transaction=False)
            for e in _entries(seq, INGEST_BATCH):
                pipe.xadd(
                    key,
                    {
                        "seq": e["seq"],
                        "type": e["type"],
                        "run_id": "run_bench",
                        "token": 1,
                        "data": orjson.dumps(e["data"]),
                        "ts": int(time.time() * 1000),
                    },
                    id=f"{e['seq']}-0",
                )
            n += len(await pipe.execute())
        return n

    t0 = time.perf_counter()
    written = sum(await asyncio.gather(*(ship(i) for i in range(INGEST_SESSIONS))))
    dt = time.perf_counter() - t0
    await client.aclose()
    return written / dt


# -- driver ----------------------------------------------------------------------------------


async def _prelude(
    api_url: str,
    redis_url: str,
    admin_token: str,
    concurrency: int,
    phase: Callable[[str], object],
    ingest: bool = True,
) -> Latency:
    """What comes before the measured invokes, in every round alike: a warm-up (invokes and
    ingests, so imports, script caches, pools are hot; a fleet measured in its first seconds
    answers the cold burst up to twice as slowly), then one caller alone (returned)."""
    phase("warming up...")
    await bench_invoke(api_url, min(4, concurrency), 200, "warmup")
    if ingest:
        await bench_ingest(api_url, redis_url, admin_token, INGEST_SESSIONS * INGEST_BATCH * 2)
    phase(f"1/4 detached invokes: {SINGLE_CALLER_REQUESTS} from one caller...")
    return (await bench_invoke(api_url, 1, SINGLE_CALLER_REQUESTS, uuid.uuid4().hex[:6]))[0]


async def _run(
    fleet: Fleet,
    redis_url: str,
    api_url: str,
    concurrency: int,
    requests: int,
    phase: Callable[[str], object] = lambda _: None,
    pids: dict[str, list[int]] | None = None,
    ingest: bool = True,
) -> Results:
    """``ingest`` False (the record on): no admin ingest phases. Their sessions are never
    invoked, so never archived; they would only pad the archive lag's samples with idle
    time. The plain invoke bench of the same run has the ingest figures."""
    single = await _prelude(api_url, redis_url, fleet.admin_token, concurrency, phase, ingest)
    phase(f"1/4 detached invokes: {requests} through the API, {concurrency} callers...")
    cpu = CpuMeter(pids or {})
    owners: set[str] = set()
    warm, cold, statuses, burst = await bench_invoke(
        api_url, concurrency, requests, uuid.uuid4().hex[:6], cpu=cpu, owners=owners
    )
    measured = warm.samples + (burst.samples if burst is not None else 0)
    cpu_ms = cpu.per_invoke_ms(measured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    phase(f"2/4 raw Redis request/reply baseline: {requests} round trips...")
    raw = await bench_invoke_raw(redis_url, concurrency, requests)
    ingest_eps = raw_eps = 0.0
    if ingest:
        phase(f"3/4 admin ingest: {INGEST_ENTRIES:,} entries...")
        ingest_eps = await bench_ingest(api_url, redis_url, fleet.admin_token, INGEST_ENTRIES)
        phase(f"4/4 raw XADD baseline: {INGEST_ENTRIES:,} entries...")
        raw_eps = await bench_ingest_raw(redis_url, INGEST_ENTRIES)
    return Results(
        concurrency=concurrency,
        requests=requests,
        invoke=warm,
        invoke_cold=cold,
        invoke_raw=raw,
        invoke_statuses=statuses,
        ingest_entries_per_s=ingest_eps,
        ingest_raw_entries_per_s=raw_eps,
        ingest_entries=INGEST_ENTRIES if ingest else 0,
        p50_met=warm.p50_ms <= TARGET_P50_MS,
        p99_met=warm.p99_ms <= TARGET_P99_MS,
        ingest_met=ingest_eps >= TARGET_INGEST_EPS,
        invoke_single=single,
        invokes_per_s=round(measured / cpu.wall_s, 1) if cpu.wall_s > 0 else 0.0,
        invoke_burst=burst,
        cpu_ms_per_invoke=cpu_ms,
        cores=cores or 1,
        closed_loop_floor_ms=round(concurrency * cpu_ms["total"] / (cores or 1), 2),
        runners_answering=len(owners),
    )


async def _run_measured(
    fleet: Fleet,
    redis_url: str,
    api_url: str,
    concurrency: int,
    requests: int,
    phase: Callable[[str], object],
    pids: dict[str, list[int]],
    database_url: str | None,
) -> Results:
    """``_run``, with the archive lag sampled throughout when the record is on."""
    if database_url is None:
        return await _run(fleet, redis_url, api_url, concurrency, requests, phase, pids)
    if pids.get("postgres"):  # the postmaster and the backends the archiver and API hold
        pids["postgres"] = process_tree(pids["postgres"][0])
    sampler = LagSampler(redis_url)
    sampler.start()
    res = await _run(fleet, redis_url, api_url, concurrency, requests, phase, pids, ingest=False)
    phase("the archive catching up...")
    res.archive = a = await sampler.finish(database_url)
    if archiver := pids.get("archiver"):
        # one session per caller, 200 entries each (10,000 at the full run's 50 callers)
        phase("the archiver draining a backlog...")
        a.drain_sessions = concurrency
        a.drain_entries, drain_s = await measure_drain(
            redis_url, database_url, archiver[0], concurrency
        )
        a.drain_s = round(drain_s, 2)
        a.drain_entries_per_s = round(a.drain_entries / drain_s, 1) if drain_s else 0.0
    return res


def _yes(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]NOT met[/red]"


def render(res: Results, console: Console) -> None:
    medians = f" (medians of {res.rounds} rounds)" if res.rounds > 1 else ""
    t = Table(title=f"detached invoke, {res.concurrency} callers, {res.requests} requests{medians}")
    for col in ("figure", "streamward", "raw Redis", "ratio", "target"):
        t.add_column(col)
    t.add_row(
        "p50 round trip",
        f"{res.invoke.p50_ms:.2f} ms",
        f"{res.invoke_raw.p50_ms:.2f} ms",
        f"{res.invoke_ratio_p50:.1f}x",
        f"<= {TARGET_P50_MS:g} ms {_yes(res.p50_met)}",
    )
    t.add_row(
        "p99 round trip",
        f"{res.invoke.p99_ms:.2f} ms",
        f"{res.invoke_raw.p99_ms:.2f} ms",
        f"{res.invoke.p99_ms / res.invoke_raw.p99_ms:.1f}x",
        f"<= {TARGET_P99_MS:g} ms {_yes(res.p99_met)}",
    )
    t.add_row(
        "cold p50 / p99 (first invoke)",
        f"{res.invoke_cold.p50_ms:.2f} / {res.invoke_cold.p99_ms:.2f} ms",
        "",
        "",
        "",
    )
    if res.ingest_entries:
        t.add_row(
            "ingest (batches of 100)",
            f"{res.ingest_entries_per_s:,.0f} entries/s",
            f"{res.ingest_raw_entries_per_s:,.0f} entries/s",
            f"{res.ingest_ratio:.2f}x",
            f">= {TARGET_INGEST_EPS:,.0f}/s {_yes(res.ingest_met)}",
        )
    if res.archive is not None:
        a = res.archive
        t.add_row(
            "archive lag p50 / p99 / max",
            f"{a.lag_p50_s:.2f} / {a.lag_p99_s:.2f} / {a.lag_max_s:.2f} s",
            "",
            "",
            "p99 <= 5 s",
        )
        t.add_row(
            "archive rate under load",
            f"{a.entries_per_s:,.0f} entries/s ({a.entries_archived:,}, caught up in "
            f"{a.catch_up_s:.1f} s)",
            "",
            "",
            "",
        )
        t.add_row(
            "archive throughput (backlog)",
            f"{a.drain_entries_per_s:,.0f} entries/s ({a.drain_entries:,} ~1 KB entries of "
            f"{a.drain_sessions} sessions in {a.drain_s:.1f} s)",
            "",
            "",
            "",
        )
    if res.invoke_burst is not None:
        t.add_row(
            "burst p50 / p99 (first warm round)",
            f"{res.invoke_burst.p50_ms:.2f} / {res.invoke_burst.p99_ms:.2f} ms",
            "",
            "",
            "",
        )
    if res.invoke_single is not None:
        t.add_row(
            "one caller p50 / p99 (no queueing)",
            f"{res.invoke_single.p50_ms:.2f} / {res.invoke_single.p99_ms:.2f} ms",
            "",
            "",
            "",
        )
    console.print(t)
    console.print(f"invoke answers: {res.invoke_statuses}")
    if res.cpu_ms_per_invoke:
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in res.cpu_ms_per_invoke.items())
        console.print(
            f"CPU ms per warm invoke: {cpu}; {res.invokes_per_s:,.0f} invokes/s. Closed loop "
            f"on {res.cores} cores: p50 >= {res.concurrency} x {res.cpu_ms_per_invoke['total']:.2f}"
            f" ms / {res.cores} = {res.closed_loop_floor_ms:.1f} ms"
        )


def render_peers(res: Results, console: Console) -> None:
    """The side-by-side table: every peer, then streamward, and its ratio to the best peer."""
    if not (res.peers or res.peers_skipped or res.peers_failed):
        return
    medians = f", medians of {res.rounds} rounds" if res.rounds > 1 else ""
    t = Table(
        title=f"detached invoke vs Redis job queues, {res.concurrency} callers, same run{medians}"
    )
    cols = ("system", "warm p50 ms", "warm p99 ms", "started/s", "CPU ms/trip", "cold p50 ms")
    for col in (*cols, "cold p99 ms"):
        t.add_column(col)

    def cpu(c: dict[str, float]) -> str:
        return f"{c['total']:.2f}" if "total" in c else "-"

    for p in res.peers:
        t.add_row(
            p.label,
            f"{p.warm.p50_ms:.2f}",
            f"{p.warm.p99_ms:.2f}",
            f"{p.started_per_s:,.0f}",
            cpu(p.cpu_ms_per_invoke),
            f"{p.cold.p50_ms:.2f}",
            f"{p.cold.p99_ms:.2f}",
        )
    t.add_row(
        "[bold]streamward detached invoke[/bold]",
        f"{res.invoke.p50_ms:.2f}",
        f"{res.invoke.p99_ms:.2f}",
        f"{res.invokes_per_s:,.0f}",
        cpu(res.cpu_ms_per_invoke),
        f"{res.invoke_cold.p50_ms:.2f}",
        f"{res.invoke_cold.p99_ms:.2f}",
    )
    console.print(t)
    for name, v in res.versus_best_peer.items():
        against = f" vs {v['peer']} ({v['peer_value']:,.2f})" if "peer" in v else ""
        console.print(
            f"{name}: streamward {v['streamward']:,.2f}{against}: ratio "
            f"{v.get('ratio', v['streamward']):.2f}x, target {v['target']}"
            + ("" if v["met"] is None else f" {_yes(v['met'])}")
            + (
                f"; rounds {', '.join(f'{r:.2f}x' for r in v['per_round'])}: met in "
                f"{v['met_rounds']}/{v['rounds']}"
                if v.get("per_round")
                else ""
            )
        )
    if res.round_figures:
        render_rounds(res, console)
    for name, why in res.peers_skipped.items():
        console.print(f"[yellow]peer {name} skipped: {why}[/yellow]")
    for name, why in res.peers_failed.items():
        console.print(f"[red]peer {name} failed: {why}[/red]")


@contextlib.contextmanager
def _streamward_up(
    console: Console, archiver: bool, status: Any, runners: int = 1
) -> Iterator[tuple[str, str, Fleet, str, dict[str, list[int]], str | None]]:
    """A throwaway redis-server, one API and ``runners`` runners (and with ``archiver`` an
    embedded PostgreSQL and one archiver): (redis url, api url, fleet, admin token, pids,
    database url or None)."""
    with RedisServer() as server, Fleet(server.url) as fleet, contextlib.ExitStack() as stack:
        console.print(f"redis {server.url}; 1 API and {runners} runner(s) (echo handler)")
        database_url: str | None = None
        extra_pids: dict[str, list[int]] = {}
        if archiver:  # the record on: an embedded PostgreSQL and one archiver process
            from streamward.tools import dev_record

            pg, database_url = dev_record.start_database(console)
            stack.callback(pg.cleanup)
            fleet.env["STREAMWARD_DATABASE_URL"] = database_url
            extra_pids["archiver"] = [dev_record.start_archiver(fleet, database_url)]
            if pg.proc is not None:
                extra_pids["postgres"] = [pg.proc.pid]  # its backends added once connected
        status.update("starting the API...")
        api = fleet.start_api()
        pids = {"api": [api.pid], "runners": []}
        for i in range(1, runners + 1):
            status.update(f"starting runner {i}/{runners}...")
            pids["runners"].append(fleet.start_runner(f"bench-runner-{i}").pid)
        if server.proc is not None:
            pids["redis"] = [server.proc.pid]
        pids.update(extra_pids)  # what the record costs, beside the rest
        yield server.url, api.url, fleet, fleet.admin_token, pids, database_url


async def _invoke_round(
    api_url: str,
    redis_url: str,
    admin_token: str,
    concurrency: int,
    requests: int,
    pids: dict[str, list[int]],
    phase: Callable[[str], object],
) -> SystemRound:
    """A later round of ``--rounds``: round 1's prelude, then the cold, burst and warm
    invokes."""
    from streamward.tools.bench.rounds import SystemRound

    await _prelude(api_url, redis_url, admin_token, concurrency, phase)
    phase(f"{requests} detached invokes, {concurrency} callers...")
    cpu = CpuMeter(pids)
    warm, cold, statuses, burst = await bench_invoke(
        api_url, concurrency, requests, uuid.uuid4().hex[:6], cpu=cpu
    )
    measured = warm.samples + (burst.samples if burst is not None else 0)
    per_s = round(measured / cpu.wall_s, 1) if cpu.wall_s > 0 else 0.0
    return SystemRound(warm, cold, burst, per_s, cpu.per_invoke_ms(measured), statuses)


def _measure_peers(
    to_run: Sequence[Any],
    concurrency: int,
    requests: int,
    console: Console,
    failed: dict[str, str],
    label: str = "",
) -> list[Any]:
    """Every peer, one after the other; a broken one is recorded in ``failed`` (``label``
    first: the round), not raised."""
    from streamward.tools.bench import peers as peerbench

    out = []
    for peer in to_run:
        with console.status(f"peer {peer.name}: {requests} handshakes, {concurrency} callers..."):
            try:
                out.append(peerbench.run_peer(peer, concurrency, requests, _run_loop))
            except Exception as exc:  # one broken peer is news, not the end of the bench
                why = f"{label}{type(exc).__name__}: {exc}"[:2000]
                failed[peer.name] = f"{failed[peer.name]}; {why}" if peer.name in failed else why
    return out


def render_rounds(res: Results, console: Console) -> None:
    """One row per round: streamward's figures beside the round's best peer's."""
    t = Table(title=f"each of the {res.rounds} rounds (streamward vs the round's best peer)")
    for col in ("round", "order", "started/s", "÷ best", "warm p50 ms", "÷ best", "CPU ms/trip"):
        t.add_column(col)

    def ratio(versus: dict[str, Any], key: str) -> str:
        v = versus.get(key)
        return f"{v['ratio']:.2f}x ({v['peer']})" if v else "-"

    for f in res.round_figures:
        ours, versus = f["streamward"], f["versus_best_peer"]

        cpus = [p["cpu_ms_per_trip"] for p in f["peers"].values()]
        best_cpu = f"{min(cpus):.2f}" if cpus else "-"
        t.add_row(
            str(f["round"]),
            f["order"],
            f"{ours['started_per_s']:,.0f}",
            ratio(versus, "started_per_s"),
            f"{ours['warm_p50_ms']:.2f}",
            ratio(versus, "warm_p50"),
            f"{ours['cpu_ms_per_trip']:.2f} (peers' lowest {best_cpu})",
        )
    console.print(t)


def main(
    concurrency: int = 50,
    requests: int = 5000,
    output: str = "table",
    peers: Sequence[str] | None = None,
    archiver: bool = False,
    rounds: int = 1,
    runners: int = 1,
) -> int:
    """Run the bench; print a table (or JSON with ``output="json"``); 0 when it ran.

    ``peers``: which Redis job queues to measure beside streamward (bench/peers.py; names,
    comma-separated allowed); None = every installed one, ``["none"]`` = none. ``archiver``:
    the record on (an embedded PostgreSQL and one archiver), with its lag and CPU reported.
    ``rounds``: the comparison repeated in alternating order, medians compared
    (bench/rounds.py). ``runners``: runner processes beside the one API (1: two server
    processes, as each peer has two workers; 2: the fleet the issue first measured).
    """
    from streamward.tools.bench import peers as peerbench
    from streamward.tools.bench import rounds as roundbench

    if output not in ("table", "json"):
        print(f"unknown output {output!r}: table or json", file=sys.stderr)
        return 2
    if concurrency < 1 or requests < concurrency:
        print("need concurrency >= 1 and requests >= concurrency", file=sys.stderr)
        return 2
    if rounds < 1 or (rounds > 1 and archiver):
        print(
            "need --rounds >= 1, and --rounds 1 with --archiver (the rounds repeat the race "
            "against the job queues, which the archive bench does not run)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= runners <= MAX_RUNNERS:
        print(f"need 1 <= --runners <= {MAX_RUNNERS}", file=sys.stderr)
        return 2
    try:
        to_run, skipped = peerbench.select(peers)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    console = Console(stderr=output == "json")
    # progress on the console (stderr with -o json, so stdout stays one JSON document)
    with (
        console.status("starting...") as status,
        _streamward_up(console, archiver, status, runners) as up,
    ):
        redis_url, api_url, fleet, _, pids, db = up
        res = _run_loop(
            _run_measured(
                fleet, redis_url, api_url, concurrency, requests, status.update, pids, db
            )
        )  # fmt: skip
    res.runners = runners
    # after streamward's API and runners are gone: each peer has the machine to itself too
    res.peers_skipped = skipped
    label = "round 1: " if rounds > 1 else ""
    res.peers = _measure_peers(to_run, concurrency, requests, console, res.peers_failed, label)
    if rounds > 1:

        def streamward_round(n: int) -> roundbench.SystemRound:
            with (
                console.status(f"round {n}/{rounds}: streamward...") as status,
                _streamward_up(console, False, status, runners) as (redis, api, _, token, pids, _),
            ):

                def phase(what: str) -> None:
                    status.update(f"round {n}/{rounds}: {what}")

                return _run_loop(
                    _invoke_round(api, redis, token, concurrency, requests, pids, phase)
                )

        def peers_round(n: int) -> list[Any]:
            console.print(f"round {n}/{rounds}: the peers")
            failed = res.peers_failed
            return _measure_peers(to_run, concurrency, requests, console, failed, f"round {n}: ")

        first = roundbench.SystemRound(
            res.invoke, res.invoke_cold, res.invoke_burst, res.invokes_per_s,
            res.cpu_ms_per_invoke, res.invoke_statuses,
        )  # fmt: skip
        ours, res.peers, res.round_figures = roundbench.run(
            rounds, first, res.peers, streamward_round, peers_round
        )
        res.rounds = rounds
        res.invoke, res.invoke_cold, res.invoke_burst = ours.warm, ours.cold, ours.burst
        res.invokes_per_s, res.cpu_ms_per_invoke = ours.started_per_s, ours.cpu_ms_per_invoke
        res.closed_loop_floor_ms = round(
            concurrency * ours.cpu_ms_per_invoke.get("total", 0.0) / res.cores, 2
        )
        res.p50_met = res.invoke.p50_ms <= TARGET_P50_MS
        res.p99_met = res.invoke.p99_ms <= TARGET_P99_MS
    res.versus_best_peer = peerbench.compare(
        res.invoke, res.invoke_cold, res.invokes_per_s, res.peers
    )
    roundbench.tally(res.versus_best_peer, res.round_figures)
    if output == "json":
        out = asdict(res) | {
            "invoke_ratio_p50": res.invoke_ratio_p50,
            "ingest_ratio": res.ingest_ratio,
            "targets": {
                "p50_ms": TARGET_P50_MS,
                "p99_ms": TARGET_P99_MS,
                "ingest_entries_per_s": TARGET_INGEST_EPS,
            },
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        render(res, console)
        render_peers(res, console)
    return 0
