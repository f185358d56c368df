"""``streamward bench rollout``: a Kubernetes rolling update of the runners under load.

Emulates a Deployment rollout with ``maxSurge: 1, maxUnavailable: 0`` over ``runners`` runner
replicas while the load generator (``api/loadgen.py``) keeps invoking, all real processes
(``api.fleet.Fleet``) on one throwaway ``redis-server``:

1. start ``apis`` API instances (ingest audit on) and ``runners`` old runners ``old-<i>``;
2. **warm-up**: invoke every session once (each gets an owner) and wait for those runs to
   end; then a **steady** phase of ``before_s`` seconds at ``rate_per_s``, the sessions
   invoked in turn (``_pace``): the baseline latency, measured in the same run;
3. **rollout**: for each old runner in turn, start its replacement ``new-<i>``, wait until it
   is ready (its replica lease exists: what a readiness probe would check), then SIGTERM the
   old one and go on to the next surge without waiting for the old pod to exit (a
   terminating pod no longer counts against ``maxSurge``); the phase ends when the last old
   runner has exited;
4. an **after** phase of ``after_s`` seconds; then the load stops, every acknowledged run is
   awaited to its terminal entry, the ingest audit and the session logs are read.

Proved (``api/chaos_check.py``): ``check_exactly_once`` (every acknowledged invoke ran exactly
once: one ``run.started``, one terminal entry, never interrupted; nothing ran that nobody
invoked) and ``check_history`` (fencing, holders, nothing lost, seqs 1..n). Reported: the ack
latency (``acked_ns - sent_ns``) of invokes sent in each phase, and the **added latency** of
the rollout: its p99 / max minus the steady phase's p99 / max, and how many rollout invokes
waited longer than any steady one. Also per replaced runner: how long its replacement took to
be ready, its drain time and exit code, the runs that were in flight on it at SIGTERM and
finished during its drain (from the transcripts: ``run.started`` by it before the signal,
terminal entry after), and the sessions it released while draining (its log).

On a small shared machine the added latency is mostly CPU: each new runner's start-up (a
Python process importing its world) competes with the APIs and runners serving the load.

Exit code 0 when both checks hold; 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
from rich.console import Console
from rich.table import Table

from streamward.api.audit import read_audit
from streamward.lua.keys import Keys
from streamward.tools.chaos_check import (
    TERMINAL_TYPES,
    CheckReport,
    InvokeRecord,
    check_exactly_once,
    check_history,
    read_logs,
)
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.loadgen import LoadConfig, LoadGen, percentile, round1, wait_terminal
from streamward.tools.server import RedisServer

T = TypeVar("T")
KEYS = Keys()
PROJECT = "default"
# a draining runner finishes its runs (each under a second here) then exits; past this the
# bench kills it and says so (a drain that hangs is a bug, not a slow rollout)
EXIT_WAIT_S = 40.0
# a run.started the runner put just before the signal is stored a few ms after it; later
# than this it was decided after the drain began (reported, not fatal: it still finishes)
LATE_START_GRACE_MS = 250
_DRAINING = re.compile(r"draining (\d+) sessions \((\d+) runs in flight\)")
_RELEASED = re.compile(r"session (\S+) released \(drain\)")


@dataclass
class Phase:
    """Ack latency of the invokes sent in one phase."""

    name: str
    seconds: float
    invokes: int
    acked: int
    unacked: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, name: str, seconds: float, records: list[InvokeRecord]) -> Phase:
        ms = [r.latency_ns / 1e6 for r in records if r.latency_ns is not None]
        return cls(
            name=name,
            seconds=round(seconds, 2),
            invokes=len(records),
            acked=sum(1 for r in records if r.acked),
            unacked=sum(1 for r in records if not r.acked),
            p50_ms=round1(percentile(ms, 0.50)),
            p99_ms=round1(percentile(ms, 0.99)),
            max_ms=round1(max(ms, default=None)),
        )


@dataclass
class Swap:
    """One step of the rollout: ``new`` replaced ``old``."""

    old: str
    new: str
    new_ready_s: float  # start of the new runner -> its replica lease exists
    sigterm_ns: int
    exit_code: int | None = None  # -9: killed after EXIT_WAIT_S
    drain_s: float | None = None  # SIGTERM -> process exit
    runs_in_flight: int | None = None  # the runner's own count at SIGTERM (its log)
    released_in_drain: int = 0  # sessions it released while draining (its log)
    drained_runs: int = 0  # transcripts: started by it before SIGTERM, finished after
    started_after_sigterm: int = 0  # transcripts: run.started by it well after SIGTERM


@dataclass
class RolloutResult:
    runners: int
    apis: int
    sessions: int
    rate_per_s: float
    phases: dict[str, Phase]
    added_p99_ms: float | None
    added_max_ms: float | None
    # invokes sent during the rollout that waited longer than any of the steady phase
    slower_than_steady: int
    swaps: list[Swap]
    old_left: list[str]  # old replicas whose replica lease or index entry is still there
    new_alive: list[str]  # new replicas whose replica lease exists
    handed_over: int  # sessions whose runs moved from an old runner to a new one
    workdir: str
    exactly_once: CheckReport = field(repr=False)
    history: CheckReport = field(repr=False)
    records: list[InvokeRecord] = field(repr=False, default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exactly_once.ok and self.history.ok

    def to_dict(self) -> dict[str, Any]:
        skip = ("exactly_once", "history", "records")
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip
        }
        out["phases"] = {k: asdict(p) for k, p in self.phases.items()}
        out["swaps"] = [asdict(s) for s in self.swaps]
        out["ok"] = self.ok
        for name in ("exactly_once", "history"):
            rep: CheckReport = getattr(self, name)
            out[name] = {"ok": rep.ok, "violations": rep.violations, "stats": rep.stats}
        return out


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


# -- the run -------------------------------------------------------------------------------------


async def _wait_exit(proc: Proc, timeout_s: float) -> tuple[int, int]:
    """(exit code, time.time_ns() of the exit), polled: no thread per waiting runner."""
    deadline = time.monotonic() + timeout_s
    while (code := proc.popen.poll()) is None:
        if time.monotonic() > deadline:
            proc.kill()
            return -9, time.time_ns()
        await asyncio.sleep(0.02)
    return code, time.time_ns()


async def _pace(
    lg: LoadGen,
    session_ids: list[str],
    rate_per_s: float,
    stream_fraction: float,
    stop: asyncio.Event,
) -> None:
    """Invoke at a steady rate, the sessions in turn: with ``sessions / rate_per_s`` longer
    than a run, an invoke never queues behind the previous one of its session in steady
    state, so the steady latency is the system's, and what the rollout adds stands out
    (random picks would mix in same-session queueing of up to a run's length)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(lg.cfg.seed)
    interval_s = 1.0 / rate_per_s
    next_t = loop.time()
    n = 0
    while not stop.is_set():
        mode = "stream" if rng.random() < stream_fraction else "detached"
        lg.submit(session_ids[n % len(session_ids)], mode)
        n += 1
        next_t += interval_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_t - loop.time()))


def _log_messages(proc: Proc) -> list[str]:
    """The ``msg`` of every JSON log line of a process (other lines as they are)."""
    out: list[str] = []
    for line in proc.log().splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        out.append(str(rec.get("msg", "")) if isinstance(rec, dict) else line)
    return out


def _drain_figures(swap: Swap, proc: Proc) -> None:
    for msg in _log_messages(proc):
        if (m := _DRAINING.search(msg)) is not None and swap.runs_in_flight is None:
            swap.runs_in_flight = int(m.group(2))
        elif _RELEASED.search(msg):
            swap.released_in_drain += 1


def _started_by(entry: dict[str, str]) -> str | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(entry.get("data", "null"))
        if isinstance(data, dict) and data.get("replica_id") is not None:
            return str(data["replica_id"])
    return None


def _transcript_figures(
    logs: dict[str, list[dict[str, str]]], swaps: list[Swap], new_ids: set[str]
) -> int:
    """Fill each swap's run counts from the transcripts; returns the sessions handed over."""
    sig_ms = {s.old: s.sigterm_ns // 1_000_000 for s in swaps}
    by_old = {s.old: s for s in swaps}
    handed_over = 0
    for entries in logs.values():
        started: dict[str, tuple[str, str, int]] = {}  # run_id -> (replica, token, ts ms)
        owners: list[str] = []  # replicas that started runs here, in log order
        for e in entries:
            etype, run_id, ts = e["type"], e["run_id"], int(e["ts"])
            if etype == "run.started" and (rep := _started_by(e)) is not None:
                started[run_id] = (rep, e["token"], ts)
                if not owners or owners[-1] != rep:
                    owners.append(rep)
                if rep in sig_ms and ts > sig_ms[rep] + LATE_START_GRACE_MS:
                    by_old[rep].started_after_sigterm += 1
            elif etype in TERMINAL_TYPES and run_id in started:
                rep, token, t0 = started[run_id]
                if rep in sig_ms and t0 < sig_ms[rep] <= ts and token == e["token"]:
                    by_old[rep].drained_runs += 1
        moved = any(a in sig_ms and b in new_ids for a, b in itertools.pairwise(owners))
        handed_over += moved
    return handed_over


async def _run(
    fleet: Fleet,
    redis_url: str,
    *,
    runners: int,
    apis: int,
    sessions: int,
    rate_per_s: float,
    before_s: float,
    after_s: float,
    stream_fraction: float,
    seed: int,
    settle_s: float,
    log: Callable[[str], None],
) -> RolloutResult:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-fleet")

    async def blocking(fn: Callable[..., T], *args: Any) -> T:
        # fleet start-up polls synchronously: off the loop, so the load keeps its rate
        return await loop.run_in_executor(pool, functools.partial(fn, *args))

    try:
        api_procs = [await blocking(fleet.start_api) for _ in range(apis)]
        old: dict[str, Proc] = {}
        for i in range(1, runners + 1):
            old[f"old-{i}"] = await blocking(fleet.start_runner, f"old-{i}")
        log(f"{apis} API(s), {runners} runners up; warming {sessions} sessions")
        session_ids = [f"ro-{i}" for i in range(sessions)]
        lg = LoadGen(
            LoadConfig(
                api_urls=[p.url for p in api_procs],
                session_ids=session_ids,
                rate_per_s=rate_per_s,
                stream_fraction=stream_fraction,
                seed=seed,
                project=PROJECT,
                key_prefix=f"ro{seed}",
            )
        )
        try:
            await asyncio.gather(*(lg.invoke(sid) for sid in session_ids))
            # the steady phase starts on idle owned sessions, not behind the warm-up runs
            await wait_terminal(redis_url, lg.records, settle_s, poll_s=0.2)
            t_steady = time.time_ns()
            stop = asyncio.Event()
            pacer = asyncio.create_task(_pace(lg, session_ids, rate_per_s, stream_fraction, stop))
            log(f"steady load at {rate_per_s:g}/s for {before_s:g}s")
            await asyncio.sleep(before_s)

            t_roll = time.time_ns()
            swaps: list[Swap] = []
            exits: list[asyncio.Task[tuple[int, int]]] = []
            new: dict[str, Proc] = {}
            for i, (old_id, old_proc) in enumerate(old.items(), 1):
                new_id = f"new-{i}"
                t0 = time.monotonic()
                new[new_id] = await blocking(fleet.start_runner, new_id)
                ready_s = time.monotonic() - t0
                swap = Swap(old_id, new_id, round(ready_s, 2), time.time_ns())
                old_proc.signal(signal.SIGTERM)
                swaps.append(swap)
                exits.append(asyncio.create_task(_wait_exit(old_proc, EXIT_WAIT_S)))
                log(f"{new_id} ready in {ready_s:.1f}s; SIGTERM {old_id}")
            for swap, (code, exit_ns) in zip(swaps, await asyncio.gather(*exits), strict=True):
                swap.exit_code = code
                swap.drain_s = round((exit_ns - swap.sigterm_ns) / 1e9, 2)
            t_roll_end = time.time_ns()
            log(f"rollout done in {(t_roll_end - t_roll) / 1e9:.1f}s; after phase {after_s:g}s")
            await asyncio.sleep(after_s)
            stop.set()
            await pacer
            t_end = time.time_ns()
            await lg.drain(timeout_s=lg.cfg.submit_deadline_s + 5)
            left = await wait_terminal(redis_url, lg.records, settle_s, poll_s=0.2)
            if left:
                log(f"{left} acknowledged runs still not finished after {settle_s:g}s")
            await lg.wait_streams(timeout_s=10)
        finally:
            await lg.aclose()
        records = list(lg.records)
    finally:
        pool.shutdown(wait=False)

    for swap in swaps:
        _drain_figures(swap, old[swap.old])
    audit_path = fleet.env["STREAMWARD_INGEST_AUDIT_PATH"]
    audit = read_audit(audit_path)  # before the logs: every seq it names is then in them
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        refs = [f"{PROJECT}/{sid}" for sid in session_ids]
        logs = read_logs(client, KEYS, refs)
        old_left = [
            r
            for r in old
            if client.exists(KEYS.replica(r).lease) or client.zscore(KEYS.replicas, r) is not None
        ]
        new_alive = [r for r in new if client.exists(KEYS.replica(r).lease)]
    finally:
        client.close()
    handed_over = _transcript_figures(logs, swaps, set(new))

    def sent_in(lo: int, hi: int | None) -> list[InvokeRecord]:
        return [r for r in records if r.sent_ns >= lo and (hi is None or r.sent_ns < hi)]

    phases = {
        "steady": Phase.of("steady", (t_roll - t_steady) / 1e9, sent_in(t_steady, t_roll)),
        "rollout": Phase.of("rollout", (t_roll_end - t_roll) / 1e9, sent_in(t_roll, t_roll_end)),
        "after": Phase.of("after", (t_end - t_roll_end) / 1e9, sent_in(t_roll_end, None)),
    }
    return RolloutResult(
        runners=runners,
        apis=apis,
        sessions=sessions,
        rate_per_s=rate_per_s,
        phases=phases,
        added_p99_ms=_minus(phases["rollout"].p99_ms, phases["steady"].p99_ms),
        added_max_ms=_minus(phases["rollout"].max_ms, phases["steady"].max_ms),
        slower_than_steady=sum(
            1
            for r in sent_in(t_roll, t_roll_end)
            if r.latency_ns is not None and r.latency_ns / 1e6 > (phases["steady"].max_ms or 0.0)
        ),
        swaps=swaps,
        old_left=old_left,
        new_alive=new_alive,
        handed_over=handed_over,
        workdir=str(fleet.workdir),
        exactly_once=check_exactly_once(records, logs),
        history=check_history(audit, records, logs),
        records=records,
    )


def run_rollout(
    *,
    runners: int = 4,
    apis: int = 2,
    sessions: int = 32,
    rate_per_s: float = 20.0,
    before_s: float = 8.0,
    after_s: float = 4.0,
    stream_fraction: float = 0.3,
    seed: int = 0,
    settle_s: float = 60.0,
    workdir: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> RolloutResult:
    """The whole rollout on a fresh Redis and fleet (see module); the figures and checks."""
    env = {"STREAMWARD_LOG_LEVEL": "info"}
    with RedisServer() as server:
        fleet = Fleet(server.url, env=env)
        if workdir is not None:
            fleet.workdir = Path(workdir)
            fleet.workdir.mkdir(parents=True, exist_ok=True)
        fleet.env["STREAMWARD_INGEST_AUDIT_PATH"] = str(fleet.workdir / "ingest-audit.jsonl")
        log(f"redis {server.url}; logs and audit in {fleet.workdir}")
        with fleet:
            return asyncio.run(
                _run(
                    fleet,
                    server.url,
                    runners=runners,
                    apis=apis,
                    sessions=sessions,
                    rate_per_s=rate_per_s,
                    before_s=before_s,
                    after_s=after_s,
                    stream_fraction=stream_fraction,
                    seed=seed,
                    settle_s=settle_s,
                    log=log,
                )
            )


# -- output --------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(res: RolloutResult, console: Console) -> None:
    t = Table(
        title=f"rollout: ack latency per phase ({res.runners} runners replaced one by one, "
        f"maxSurge 1 / maxUnavailable 0; {res.rate_per_s:g} invokes/s over {res.sessions} "
        f"sessions, {res.apis} API(s))",
        caption="latency: send -> 202 / first stream line, of the invokes sent in the phase; "
        "added: rollout minus steady",
    )
    for col in ("phase", "seconds", "invokes", "acked", "unacked", "p50 ms", "p99 ms", "max ms"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for p in res.phases.values():
        t.add_row(
            p.name,
            f"{p.seconds:.1f}",
            str(p.invokes),
            str(p.acked),
            str(p.unacked),
            _ms(p.p50_ms),
            _ms(p.p99_ms),
            _ms(p.max_ms),
        )
    t.add_row(
        "added (rollout - steady)", "", "", "", "", "", _ms(res.added_p99_ms), _ms(res.added_max_ms)
    )
    console.print(t)
    console.print(
        f"worst added latency: p99 {_ms(res.added_p99_ms)} ms, max {_ms(res.added_max_ms)} ms "
        f"(rollout minus steady; negative = within the steady noise); "
        f"{res.slower_than_steady} of {res.phases['rollout'].invokes} rollout invokes waited "
        "longer than any steady one",
        highlight=False,
    )

    s = Table(
        title="replaced runners",
        caption="ready: new runner start -> replica lease; drain: SIGTERM -> exit; in flight: "
        "runs at SIGTERM (its log); drained: runs started before SIGTERM, finished by it "
        "after (transcripts); released: sessions released while draining; late starts: "
        f"run.started by it > {LATE_START_GRACE_MS} ms after SIGTERM",
    )
    cols = ("old", "new", "ready s", "drain s", "exit", "in flight", "drained", "released")
    for col in (*cols, "late starts"):
        s.add_column(col, justify="left" if col in ("old", "new") else "right")
    for w in res.swaps:
        s.add_row(
            w.old,
            w.new,
            f"{w.new_ready_s:.1f}",
            "-" if w.drain_s is None else f"{w.drain_s:.2f}",
            str(w.exit_code),
            "-" if w.runs_in_flight is None else str(w.runs_in_flight),
            str(w.drained_runs),
            str(w.released_in_drain),
            str(w.started_after_sigterm),
        )
    console.print(s)
    console.print(
        f"old replicas left: {res.old_left or 'none'}; new alive: {len(res.new_alive)}"
        f"/{res.runners}; sessions handed from an old to a new runner: {res.handed_over}"
    )
    for name, rep in (("exactly once", res.exactly_once), ("history", res.history)):
        console.print(f"[bold]{name}[/]:")
        console.print(rep.summary(), highlight=False, markup=False)
    verdict = "[green]exactly once: yes[/]" if res.ok else "[red]exactly once: NO[/]"
    console.print(f"{verdict}  (logs and ingest audit: {res.workdir})")


def main(
    runners: int = 4,
    before_s: float = 8.0,
    after_s: float = 4.0,
    rate_per_s: float = 20.0,
    sessions: int = 32,
    apis: int = 2,
    stream_fraction: float = 0.3,
    seed: int = 0,
    output: str = "table",
) -> int:
    """Run the rollout; print a table (or JSON with ``output="json"``); 0 when exactly-once
    and the history checks hold, 1 when not, 2 for bad arguments."""
    if output not in ("table", "json"):
        print(f"unknown output {output!r}: table or json", file=sys.stderr)
        return 2
    if runners < 1 or sessions < 1 or apis < 1 or rate_per_s <= 0 or before_s <= 0:
        print("need runners, sessions, apis >= 1 and rate_per_s, before_s > 0", file=sys.stderr)
        return 2
    if after_s < 0 or not 0.0 <= stream_fraction <= 1.0:
        print("need after_s >= 0 and 0 <= stream_fraction <= 1", file=sys.stderr)
        return 2
    console = Console(stderr=output == "json")
    res = run_rollout(
        runners=runners,
        apis=apis,
        sessions=sessions,
        rate_per_s=rate_per_s,
        before_s=before_s,
        after_s=after_s,
        stream_fraction=stream_fraction,
        seed=seed,
        log=lambda msg: console.print(msg, highlight=False, markup=False),
    )
    if output == "json":
        print(orjson.dumps(res.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(res, console)
    return 0 if res.ok else 1
