"""``streamward chaos``: a real fleet under seeded faults, then a proof that fencing held.

One machine, real processes: a ``redis-server`` with AOF (``appendfsync always``), ``apis``
API instances, ``runners`` runner replicas (echo handler, short replica TTL), and the load
generator (``api/loadgen.py``) invoking ``sessions`` sessions, detached and streamed, at
``rate_per_s``. Every API appends one line per ingest attempt to a shared audit file
(``STREAMWARD_INGEST_AUDIT_PATH``, ``api/audit.py``).

A schedule of faults is drawn from the seed (``make_schedule``: a pure function of its
arguments) and applied with real signals: kill -9 of a runner, SIGSTOP of a runner for
longer than the replica TTL then SIGCONT, SIGTERM of a runner, kill -9 of an API, restart
of Redis (SIGKILL or SIGTERM), a burst of invokes at one session. Whatever was killed is
started again. Then the harness quiesces (no more faults, everything continued and up, load
stopped, every acknowledged run given time to end), reads the audit and every session log
and runs ``api.chaos_check.check_history``. See docs/chaos.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson
import redis

from streamward.api.audit import read_audit
from streamward.lua.keys import Keys
from streamward.tools.chaos_check import (
    CheckReport,
    InvokeRecord,
    OperatorAction,
    check_history,
    read_logs,
)
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.loadgen import LoadConfig, LoadGen, wait_terminal
from streamward.tools.server import RedisServer, free_port, wait_ready

RUNNER_KILL = "runner_kill9"
RUNNER_STOP = "runner_sigstop"
RUNNER_TERM = "runner_sigterm"
API_KILL = "api_kill9"
REDIS_RESTART = "redis_restart"
BURST = "burst"
# a delayed write: an API paused with a runner's ingest requests in flight while that runner
# is paused past its TTL too and its sessions are taken over; when the API wakes it handles
# the old owner's requests, which fencing must refuse (the stale_token refusals of the run)
DELAYED_WRITE = "delayed_write"
# operator actions and a poison input (issue 13): what an SRE or a hostile caller does
FORCE_RELEASE = "force_release"  # POST /admin/locks/{id}/release?reason= under a running run
RUNNER_DRAIN = "runner_drain"  # POST /admin/replicas/{id}/drain, then a new runner, same id
SESSION_DELETE = "session_delete"  # DELETE /v1/sessions/{id} with a run active and inputs queued
ROUTE_RESET = "route_reset"  # POST /admin/routes/{route}/reset of a routed key, run active
POISON = "poison"  # an input whose handler SIGKILLs its own runner, every time it runs
FAULT_KINDS = (
    RUNNER_KILL,
    RUNNER_STOP,
    RUNNER_TERM,
    API_KILL,
    REDIS_RESTART,
    BURST,
    DELAYED_WRITE,
    FORCE_RELEASE,
    RUNNER_DRAIN,
    SESSION_DELETE,
    ROUTE_RESET,
    POISON,
)
RUNNER_FAULTS = frozenset({RUNNER_KILL, RUNNER_STOP, RUNNER_TERM, RUNNER_DRAIN})
SESSION_FAULTS = frozenset({FORCE_RELEASE, SESSION_DELETE})
# relative weights of the random draws after the first one of each kind (``--faults``
# overrides them): a poison input takes down several runners, so it comes less often
DEFAULT_WEIGHTS: dict[str, float] = {k: 1.0 for k in FAULT_KINDS} | {POISON: 0.25}

# schedule model: faults start every GAP_S apart; each keeps its target "busy" for a nominal
# time so the schedule never aims two faults at one process at once
GAP_S = (2.0, 5.0)
FIRST_GAP_S = (1.5, 4.0)
START_BUDGET_S = 3.0  # nominal time for a restarted process to be up again
TERM_BUDGET_S = 2.0  # nominal drain time of a SIGTERMed runner (runs last < 1.5 s)
TAIL_S = 1.0  # no fault starts in the last second of the fault phase
# delayed_write: how long the API is paused before its runner is (requests pile up in it)
DELAYED_WRITE_LEAD_S = 1.0

# a poison input keeps the schedule from starting another one for this long (its owners die
# one after another, each noticed after a replica TTL)
POISON_BUDGET_S = 20.0
POISON_MAX_OWNERS = 3  # STREAMWARD_POISON_AFTER_OWNERS of the chaos runners
KEY_COUNT = 50  # routed keys a route_reset fault picks from
ROUTE_ID = "chaos"  # the route the route_reset faults send events through
ROUTE_SOURCE = "chaos"
HANDLER = "streamward.tools.chaos_handler:handler"  # echo, and the poison input
ADMIN_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5  # runner drain bound: a SIGTERM restart should not wait 20 s
CLOSE_DELAY_S = 5  # idle sessions passivate and get claimed again: more lease churn
KEYS = Keys()


# -- durations ----------------------------------------------------------------------------------

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """``"90"`` (seconds), ``"60s"``, ``"5m"``, ``"1h"``, ``"1m30s"``, ``"500ms"`` -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        value = float(t)
    else:
        parts = list(_PART.finditer(t))
        if not parts or "".join(m.group(0) for m in parts) != t:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90, 60s, 5m, 30m, 1h)")
        value = sum(float(m.group(1)) * _UNIT_S[m.group(2)] for m in parts)
    if value <= 0:
        raise ValueError(f"duration must be > 0, got {text!r}")
    return value


def format_duration(duration_s: float) -> str:
    """The shortest ``parse_duration`` spelling of a duration (for the replay command)."""
    if duration_s >= 60 and duration_s % 60 == 0:
        return f"{int(duration_s // 60)}m"
    return f"{duration_s:g}s"


def parse_faults(spec: str) -> dict[str, float]:
    """``--faults``: ``""`` / ``"all"`` (every kind, default weights), or a comma list of
    ``kind`` / ``kind=weight``: only the kinds named, weight 1 unless given; ``-kind`` (or
    ``kind=0``) after ``all`` drops one. ``"all,poison=2"`` reweights one kind."""
    weights: dict[str, float] = {}
    for raw in (p.strip() for p in spec.split(",")):
        if not raw:
            continue
        if raw == "all":
            weights.update(DEFAULT_WEIGHTS)
            continue
        if raw.startswith("-"):
            name, weight = raw[1:], 0.0
        else:
            name, _, text = raw.partition("=")
            try:
                weight = float(text) if text else 1.0
            except ValueError:
                raise ValueError(
                    f"--faults: weight of {name!r} is not a number: {text!r}"
                ) from None
        if name not in FAULT_KINDS:
            raise ValueError(
                f"--faults: unknown fault kind {name!r} (kinds: {', '.join(FAULT_KINDS)})"
            )
        if weight < 0 or weight != weight or weight == float("inf"):
            raise ValueError(f"--faults: weight of {name!r} must be a finite number >= 0")
        weights[name] = weight
    if not weights:
        return dict(DEFAULT_WEIGHTS)
    if not any(w > 0 for w in weights.values()):
        raise ValueError("--faults: every kind has weight 0")
    return {k: w for k, w in weights.items() if w > 0}


# -- the schedule -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule."""

    at_s: float  # seconds after the load started
    kind: str
    target: int  # runner / API index; session index for a burst; 0 for Redis
    hold_s: float = 0.0  # SIGSTOP length, or down time before a restart
    signal: str = ""  # redis_restart: "SIGKILL" or "SIGTERM"
    count: int = 0  # burst: how many invokes; route_reset: events before the reset
    partner: int = -1  # delayed_write: the runner paused with its API (target = API index)


def make_schedule(
    seed: int,
    duration_s: float,
    *,
    runners: int = 4,
    apis: int = 2,
    sessions: int = 200,
    replica_ttl_ms: int = 3000,
    warmup_s: float = 3.0,
    weights: dict[str, float] | None = None,
) -> list[Fault]:
    """The faults of a run: a pure function of its arguments (same seed, same schedule).

    ``weights`` (``parse_faults``) picks the kinds and their odds (default: every kind,
    ``DEFAULT_WEIGHTS``)."""
    # The first faults are one of each kind in a seeded order (when the duration leaves
    # room), then kinds are drawn at random; a slot whose kind has no target up stays quiet.
    # Each fault keeps its target busy for a nominal time, so at most half the runners (at
    # least one) and all APIs but one are down at once, Redis restarts never overlap, and a
    # process never gets two faults at once.
    rng = random.Random(seed)
    ttl_s = replica_ttl_ms / 1000
    runner_busy = [0.0] * runners  # nominal time each target is back
    api_busy = [0.0] * apis
    redis_busy = 0.0
    max_runners_down = max(1, runners // 2)
    max_apis_down = max(1, apis - 1)
    weights = dict(DEFAULT_WEIGHTS) if weights is None else weights
    kinds = [k for k in FAULT_KINDS if weights.get(k, 0) > 0]
    odds = [weights[k] for k in kinds]
    poison_busy = 0.0
    pending = rng.sample(kinds, len(kinds))  # one of each kind first
    out: list[Fault] = []
    t = warmup_s
    first = True
    while True:
        if not first:
            # the first one of each kind comes a little faster: a 60 s run fits all twelve
            t += rng.uniform(*(FIRST_GAP_S if pending else GAP_S))
        first = False
        if t > duration_s - TAIL_S:
            return out

        free_r = _free(runner_busy, t, max_runners_down)
        free_a = _free(api_busy, t, max_apis_down)
        possible = {
            RUNNER_KILL: bool(free_r),
            RUNNER_STOP: bool(free_r),
            RUNNER_TERM: bool(free_r),
            API_KILL: bool(free_a),
            REDIS_RESTART: redis_busy <= t,
            BURST: True,
            # a free API and a free runner that ships through it (runner i uses API i % apis)
            DELAYED_WRITE: any(r % apis in free_a for r in free_r),
            FORCE_RELEASE: True,
            RUNNER_DRAIN: bool(free_r),
            SESSION_DELETE: True,
            ROUTE_RESET: True,
            POISON: poison_busy <= t,
        }
        if pending:  # one of each kind first: the first one whose target is up
            kind = next((k for k in pending if possible[k]), "")
            if kind:
                pending.remove(kind)
        else:
            kind = rng.choices(kinds, odds)[0]
        if not kind or not possible[kind]:
            continue  # this slot stays quiet; the next one is a gap later
        if kind == RUNNER_KILL:
            target = rng.choice(free_r)
            hold_s = round(rng.uniform(0.2, 2 * ttl_s), 2)  # before and after the TTL ran out
            runner_busy[target] = t + hold_s + START_BUDGET_S
            out.append(Fault(round(t, 2), kind, target, hold_s=hold_s))
        elif kind == RUNNER_STOP:
            target = rng.choice(free_r)
            hold_s = round(rng.uniform(1.3 * ttl_s, 2.0 * ttl_s), 2)  # always past the TTL
            runner_busy[target] = t + hold_s + 1.0
            out.append(Fault(round(t, 2), kind, target, hold_s=hold_s))
        elif kind in (RUNNER_TERM, RUNNER_DRAIN):
            target = rng.choice(free_r)
            hold_s = round(rng.uniform(0.2, 1.0), 2)
            runner_busy[target] = t + TERM_BUDGET_S + hold_s + START_BUDGET_S
            out.append(Fault(round(t, 2), kind, target, hold_s=hold_s))
        elif kind == API_KILL:
            target = rng.choice(free_a)
            hold_s = round(rng.uniform(0.2, 2.0), 2)
            api_busy[target] = t + hold_s + START_BUDGET_S
            out.append(Fault(round(t, 2), kind, target, hold_s=hold_s))
        elif kind == REDIS_RESTART:
            hold_s = round(rng.uniform(0.0, 1.5), 2)
            sig = rng.choice(("SIGKILL", "SIGTERM"))
            redis_busy = t + hold_s + 2.0
            out.append(Fault(round(t, 2), kind, 0, hold_s=hold_s, signal=sig))
        elif kind == DELAYED_WRITE:
            partner = rng.choice([r for r in free_r if r % apis in free_a])
            target = partner % apis
            hold_s = round(rng.uniform(1.3 * ttl_s, 2.0 * ttl_s), 2)
            api_busy[target] = t + DELAYED_WRITE_LEAD_S + hold_s + 1.0
            runner_busy[partner] = t + DELAYED_WRITE_LEAD_S + hold_s + 2.0
            out.append(Fault(round(t, 2), kind, target, hold_s=hold_s, partner=partner))
        elif kind in SESSION_FAULTS:
            out.append(Fault(round(t, 2), kind, rng.randrange(sessions)))
        elif kind == ROUTE_RESET:
            target = rng.randrange(KEY_COUNT)
            out.append(Fault(round(t, 2), kind, target, count=rng.randint(1, 3)))
        elif kind == POISON:
            poison_busy = t + POISON_BUDGET_S
            out.append(Fault(round(t, 2), kind, len([f for f in out if f.kind == POISON])))
        else:
            target = rng.randrange(sessions)
            out.append(Fault(round(t, 2), kind, target, count=rng.randint(20, 50)))


def route_key(i: int) -> str:
    return f"key-{i:02d}"


def poison_session(i: int) -> str:
    """Poison inputs go to sessions of their own: every load session stays a healthy one."""
    return f"chaos-poison-{i}"


def _free(busy: list[float], t: float, max_down: int) -> list[int]:
    """Targets up at ``t`` (none when ``max_down`` of them are already down)."""
    if sum(b > t for b in busy) >= max_down:
        return []
    return [i for i, b in enumerate(busy) if b <= t]


# -- configuration and results ------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run."""

    seed: int
    duration_s: float = 60.0  # fault phase (the load runs through it)
    runners: int = 4
    apis: int = 2
    sessions: int = 200
    rate_per_s: float = 10.0
    stream_fraction: float = 0.3
    replica_ttl_ms: int = 3000
    warmup_s: float = 3.0  # load before the first fault
    settle_timeout_s: float = 90.0  # after the faults: wait for acknowledged runs to end
    submit_deadline_s: float = 60.0  # the load generator's patience with one invoke
    workdir: str | None = None  # default: a fresh temp dir
    keep: bool = False  # keep the workdir (process logs, audit, Redis data)
    faults: str = ""  # ``--faults``: kinds and weights (``parse_faults``); "" = all
    poison_max_owners: int = POISON_MAX_OWNERS  # the runners' STREAMWARD_POISON_AFTER_OWNERS

    def __post_init__(self) -> None:
        if self.runners < 2:
            raise ValueError("need at least 2 runners (someone must take over)")
        if self.apis < 1 or self.sessions < 1 or self.rate_per_s <= 0 or self.duration_s <= 0:
            raise ValueError("apis, sessions, rate and duration must be positive")
        if self.poison_max_owners < 1:
            raise ValueError("poison_max_owners must be >= 1")
        parse_faults(self.faults)  # refuse a bad spec before anything starts

    @property
    def weights(self) -> dict[str, float]:
        return parse_faults(self.faults)

    def replay_command(self) -> str:
        faults = f" --faults {self.faults}" if self.faults else ""
        return (
            f"streamward chaos --duration {format_duration(self.duration_s)} --seed {self.seed}"
            f" --runners {self.runners} --apis {self.apis} --sessions {self.sessions}"
            f" --rate {self.rate_per_s:g}{faults}"
        )


@dataclass
class AppliedFault:
    """A scheduled fault as it happened (times in seconds after the load started)."""

    fault: Fault
    target_name: str
    started_s: float | None = None
    ended_s: float | None = None
    detail: str = ""
    error: str | None = None

    def line(self) -> str:
        f = self.fault
        when = "-" if self.started_s is None else f"{self.started_s:6.1f}s"
        took = (
            ""
            if self.ended_s is None or self.started_s is None
            else (f" ({self.ended_s - self.started_s:.1f}s)")
        )
        late = ""
        if self.started_s is not None and self.started_s - f.at_s > 0.5:
            late = f" [planned {f.at_s:.1f}s]"
        text = f"{when} {f.kind:<15} {self.target_name:<12} {self.detail}{took}{late}"
        return text + (f"  ERROR: {self.error}" if self.error else "")


@dataclass
class ChaosResult:
    """Everything a run measured; ``ok`` is the verdict (exit code 0)."""

    config: ChaosConfig
    schedule: list[Fault]
    applied: list[AppliedFault]
    report: CheckReport
    load: dict[str, Any]
    latency_ms: dict[str, dict[str, float | int | None]]
    ingest: dict[str, int]
    errors: list[str]  # the harness could not do what it had to: the run proves nothing
    notes: list[str]  # worth a look, not a violation
    unsettled: int  # acknowledged runs not terminal when the settle wait ended
    elapsed_s: float
    workdir: str | None

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.errors

    def kinds_applied(self) -> Counter[str]:
        return Counter(
            a.fault.kind for a in self.applied if a.started_s is not None and not a.error
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.config.seed,
            "config": asdict(self.config),
            "replay": self.config.replay_command(),
            "elapsed_s": round(self.elapsed_s, 1),
            "faults": [
                {
                    **asdict(a.fault),
                    "target_name": a.target_name,
                    "started_s": a.started_s,
                    "ended_s": a.ended_s,
                    "detail": a.detail,
                    "error": a.error,
                }
                for a in self.applied
            ],
            "faults_by_kind": dict(self.kinds_applied()),
            "load": self.load,
            "latency_ms": self.latency_ms,
            "ingest": self.ingest,
            "unsettled": self.unsettled,
            "check": {
                "ok": self.report.ok,
                "violations": self.report.violations,
                "stats": self.report.stats,
            },
            "errors": self.errors,
            "notes": self.notes,
            "workdir": self.workdir,
        }

    def summary(self) -> str:
        c = self.config
        ld = self.load
        lines = [
            f"chaos run: seed {c.seed}, {c.duration_s:g}s of faults, {c.runners} runners, "
            f"{c.apis} APIs, {c.sessions} sessions, {c.rate_per_s:g} invokes/s "
            f"(replica TTL {c.replica_ttl_ms} ms), {self.elapsed_s:.0f}s in all",
            f"faults applied ({sum(self.kinds_applied().values())}): "
            + ", ".join(f"{k} x{n}" for k, n in sorted(self.kinds_applied().items())),
        ]
        lines += ["  " + a.line() for a in self.applied]
        lines.append(
            f"invokes: {ld['sent']} sent, {ld['acked']} acknowledged, {ld['gave_up']} not "
            f"acknowledged; {ld['resubmits']} resubmits (same idempotency key), "
            f"{ld['stream_resumes']} stream resumes, {ld['streams_finished']} streams "
            "followed to their end"
        )
        for mode, lat in self.latency_ms.items():
            if lat["count"]:
                lines.append(
                    f"  ack latency {mode}: n={lat['count']} p50 {lat['p50_ms']} ms, "
                    f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
                )
        ing = self.ingest
        lines.append(
            f"ingest attempts: {ing['attempts']} ({ing['accepted']} accepted, "
            f"{ing['stale_token']} refused stale_token, {ing['not_owner']} refused not_owner, "
            f"{ing['seq_gap']} refused seq_gap); "
            f"owner changes (token changes in logs, passivations included): "
            f"{ing['takeovers']}; runs cut by an owner's death (run.interrupted): "
            f"{ing['interrupted']}"
        )
        if self.unsettled:
            lines.append(f"acknowledged runs not terminal after the settle wait: {self.unsettled}")
        lines.append(self.report.summary())
        lines += [f"harness error: {e}" for e in self.errors]
        lines += [f"note: {n}" for n in self.notes]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: seed {c.seed}; replay with: {c.replay_command()}")
        if self.workdir:
            lines.append(f"logs, audit and Redis data kept in {self.workdir}")
        return "\n".join(lines)


# -- the harness --------------------------------------------------------------------------------


class Harness:
    """Owns every process of one run; ``teardown()`` leaves nothing behind."""

    def __init__(self, cfg: ChaosConfig, out: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.say = out
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="streamward-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.audit_path = self.workdir / "ingest-audit.jsonl"
        self.redis: RedisServer | None = None
        self.fleet: Fleet | None = None
        self.runner_ids = [f"chaos-r{i + 1}" for i in range(cfg.runners)]
        self.runner_procs: list[Proc] = []
        self.api_ports: list[int] = []
        self.api_procs: list[Proc] = []
        self.session_ids = [f"chaos-{i:03d}" for i in range(cfg.sessions)]
        self.schedule = make_schedule(
            cfg.seed,
            cfg.duration_s,
            runners=cfg.runners,
            apis=cfg.apis,
            sessions=cfg.sessions,
            replica_ttl_ms=cfg.replica_ttl_ms,
            warmup_s=cfg.warmup_s,
            weights=cfg.weights,
        )
        self.applied = [AppliedFault(f, self.target_name(f)) for f in self.schedule]
        # operator actions and poison inputs as the checker needs them; their invokes and
        # events that are not the load's own (routed events, the poison inputs' sessions)
        self.actions: list[OperatorAction] = []
        self.event_records: list[InvokeRecord] = []
        self.extra_refs: dict[str, None] = {}  # session refs read besides session_ids
        self.runner_deaths: list[str] = []  # runner exits no fault caused (the supervisor's)
        self._admin: httpx.AsyncClient | None = None
        self._runner_locks: list[asyncio.Lock] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        # Fleet is not thread-safe (its process list, its log file counter) and faults start
        # processes from worker threads
        self._spawn_lock = threading.Lock()
        self.load: LoadGen | None = None
        self._rc: redis.Redis | None = None  # see incarnation()
        self._audit_pos = 0  # see stale_refusals()
        self._stale_seen = 0
        self.t0 = 0.0

    def target_name(self, f: Fault) -> str:
        if f.kind in RUNNER_FAULTS:
            return self.runner_ids[f.target]
        if f.kind == ROUTE_RESET:
            return f"{ROUTE_ID}:{route_key(f.target)}"
        if f.kind == POISON:
            return poison_session(f.target)
        if f.kind == API_KILL:
            return f"api-{f.target + 1}"
        if f.kind == DELAYED_WRITE:
            return f"api-{f.target + 1}+{self.runner_ids[f.partner]}"
        if f.kind == REDIS_RESTART:
            return "redis"
        return self.session_ids[f.target]

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    # -- processes (blocking: called from worker threads) ---------------------------------

    def _fleet(self) -> Fleet:
        assert self.fleet is not None
        return self.fleet

    def _redis(self) -> RedisServer:
        assert self.redis is not None
        return self.redis

    def start_redis(self) -> None:
        # appendfsync always: Redis fsyncs the AOF before it answers a write, so whatever a
        # script acknowledged (an accepted ingest, an enqueued input behind a 202) survives a
        # kill -9 of redis-server. With the default everysec, a SIGKILL may lose the last
        # second of acknowledged writes, and the checker would rightly call that a lost invoke
        server = RedisServer(appendonly=True, extra_args=["--appendfsync", "always"])
        # its data next to the other artefacts of the run (kept with --keep)
        shutil.rmtree(server.dir, ignore_errors=True)
        server.dir = str(self.workdir / "redis")
        os.makedirs(server.dir, exist_ok=True)
        self.redis = server  # before start(): teardown stops a server that started slowly
        server.start()

    def restart_redis(self, sig: str, down_s: float) -> str:
        server = self._redis()
        t = time.monotonic()
        server.stop(kill=sig == "SIGKILL")  # SIGTERM: redis-server fsyncs the AOF and exits
        time.sleep(down_s)
        for attempt in range(3):
            try:
                server.start(timeout_s=20)
                break
            except RuntimeError:
                server.stop(kill=True)  # a server that started too slowly holds the port
                if attempt == 2:
                    raise
                time.sleep(0.5)
        return f"{sig}, down {time.monotonic() - t:.1f}s, AOF reloaded"

    def runner_api(self, i: int) -> str:
        # a runner ships through one API URL (STREAMWARD_API_URL): spread them over the APIs
        return f"http://127.0.0.1:{self.api_ports[i % len(self.api_ports)]}"

    def start_api(self, i: int) -> Proc:
        with self._spawn_lock:
            proc = self._fleet().start_api(
                port=self.api_ports[i], env={"STREAMWARD_LOG_LEVEL": "warning"}
            )
        if i < len(self.api_procs):
            self.api_procs[i] = proc
        else:
            self.api_procs.append(proc)
        return proc

    def spawn_runner(self, i: int) -> Proc:
        with self._spawn_lock:
            rid = self.runner_ids[i]
            proc = self._fleet().start_runner(
                rid,
                env={
                    "STREAMWARD_LOG_LEVEL": "info",
                    # in the workdir: a killed runner leaves its liveness file behind
                    "STREAMWARD_HEARTBEAT_FILE": str(self.workdir / f"{rid}.heartbeat"),
                },
                api_url=self.runner_api(i),
                wait_s=0,
            )
        if i < len(self.runner_procs):
            self.runner_procs[i] = proc
        else:
            self.runner_procs.append(proc)
        return proc

    def start_runner(self, i: int, previous: str | None) -> float:
        """Start runner ``i`` again (same id); seconds until a new incarnation is registered."""
        # not just "a replica lease exists": a runner killed before its TTL ran out left one
        t = time.monotonic()
        rid = self.runner_ids[i]
        for attempt in range(5):
            proc = self.spawn_runner(i)
            old = {None, previous}
            try:
                wait_ready(
                    functools.partial(self._registered, rid, old),
                    exited=proc.exit_log,
                    what=f"runner {rid}",
                    timeout_s=30,
                )
                return time.monotonic() - t
            except RuntimeError:
                # registered and at once SIGKILLed by a poison input it claimed: a casualty
                # like any other, and the fleet keeps its size
                if proc.popen.poll() != -signal.SIGKILL or attempt == 4:
                    raise
                self.runner_deaths.append(f"{rid} pid {proc.pid} SIGKILLed while starting")
                previous = self.incarnation(rid)
        raise AssertionError("unreachable")

    def _registered(self, replica_id: str, old: set[str | None]) -> bool:
        return self.incarnation(replica_id) not in old

    def _client(self) -> redis.Redis:
        if self._rc is None:  # one client (its pool is thread-safe), reconnecting after restarts
            self._rc = redis.Redis.from_url(
                self._redis().url, decode_responses=True, socket_timeout=2, socket_connect_timeout=1
            )
        return self._rc

    def incarnation(self, replica_id: str) -> str | None:
        try:
            value = self._client().hget(KEYS.replica(replica_id).lease, "incarnation")
            return None if value is None else str(value)
        except redis.RedisError:
            return None

    async def _reregistered(self, rid: str, before: str | None) -> float | None:
        """Seconds until ``rid`` registers an incarnation other than ``before`` (None: not in
        20 s, noted): a runner paused past its TTL must fence itself and come back as new."""
        t = time.monotonic()
        deadline = t + 20
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.incarnation, rid) not in (None, before):
                return time.monotonic() - t
            await asyncio.sleep(0.1)
        self.notes.append(f"{rid} did not re-register within 20 s of SIGCONT")
        return None

    def start_fleet(self) -> None:
        self.start_redis()
        env = {
            "STREAMWARD_INGEST_AUDIT_PATH": str(self.audit_path),
            "STREAMWARD_REPLICA_TTL_MS": str(self.cfg.replica_ttl_ms),
            "STREAMWARD_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
            "STREAMWARD_CLOSE_DELAY_S": str(CLOSE_DELAY_S),
            "STREAMWARD_HANDLER": HANDLER,
            "STREAMWARD_POISON_AFTER_OWNERS": str(self.cfg.poison_max_owners),
            # whatever the calling shell exports, this fleet is standalone and open
            "STREAMWARD_REDIS_MODE": "standalone",
            "STREAMWARD_API_TOKENS": "{}",
        }
        self.fleet = Fleet(self._redis().url, env=env, workdir=self.workdir)
        self.api_ports = [free_port() for _ in range(self.cfg.apis)]
        for i in range(self.cfg.apis):
            self.start_api(i)
        procs = [self.spawn_runner(i) for i in range(self.cfg.runners)]
        for rid, proc in zip(self.runner_ids, procs, strict=True):
            self._fleet().wait_replica(proc, rid, wait_s=60)
        if ROUTE_RESET in self.cfg.weights:
            self._create_route()

    def _create_route(self) -> None:
        """The route of the route_reset faults: key and input straight from the payload."""
        route = {
            "route_id": ROUTE_ID,
            "source": ROUTE_SOURCE,
            "on": ["*"],
            # expressions see the event's payload as their root
            "session": {"key_expr": "key", "close_delay_seconds": 30},
            "input_expr": "input",
        }
        resp = httpx.post(
            f"http://127.0.0.1:{self.api_ports[0]}/admin/routes",
            json=route,
            headers={"Authorization": f"Bearer {self._fleet().admin_token}"},
            timeout=10,
        )
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"could not create the chaos route: {resp.status_code} {resp.text}")

    def teardown(self) -> None:
        """Stop every process and Redis; remove the workdir unless asked to keep it."""
        procs = list(self.fleet.procs) if self.fleet is not None else []
        for p in procs:
            with contextlib.suppress(OSError):
                p.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            if p.alive():
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    p.kill()
        if self.fleet is not None:
            self.fleet.procs.clear()
        if self._rc is not None:
            self._rc.close()
        if self.redis is not None:
            self.redis.stop()
        if not self.cfg.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- faults (async; blocking steps in worker threads) ---------------------------------

    async def _fault(
        self, a: AppliedFault, locks: dict[str, asyncio.Lock], limits: dict[str, asyncio.Semaphore]
    ) -> None:
        f = a.fault
        await asyncio.sleep(max(0.0, f.at_s - self.now_s()))
        if f.kind == DELAYED_WRITE:  # one API and one runner
            needs = [("runner", f.partner), (API_KILL, f.target)]
        elif f.kind in SESSION_FAULTS:  # one operator action at a time per session
            needs = [("session", f.target)]
        else:
            needs = [("runner" if f.kind in RUNNER_FAULTS else f.kind, f.target)]
        async with contextlib.AsyncExitStack() as stack:
            for group, target in needs:
                limit = limits.get(group)  # never every runner (or every API) down at once
                if limit is not None:
                    await stack.enter_async_context(limit)
                lock = locks.get(f"{group}:{target}")  # one fault at a time per process
                if lock is not None:
                    await stack.enter_async_context(lock)
            a.started_s = round(self.now_s(), 2)
            try:
                a.detail = await self._apply(f, a)
            except Exception as exc:  # one failed fault must not end the run: it is reported
                a.error = f"{type(exc).__name__}: {exc}"
                self.errors.append(f"{a.target_name} {f.kind} at {a.started_s}s: {a.error}")
            finally:
                a.ended_s = round(self.now_s(), 2)

    async def _apply(self, f: Fault, a: AppliedFault) -> str:
        if f.kind == RUNNER_DRAIN:
            return await self._drain(f)
        if f.kind in RUNNER_FAULTS:
            return await self._runner_fault(f)
        if f.kind == FORCE_RELEASE:
            return await self._force_release(f, a)
        if f.kind == SESSION_DELETE:
            return await self._delete(f)
        if f.kind == ROUTE_RESET:
            return await self._route_reset(f)
        if f.kind == POISON:
            return await self._poison(f, a)
        if f.kind == API_KILL:
            proc = self.api_procs[f.target]
            pid = proc.pid
            proc.signal(signal.SIGKILL)
            await asyncio.to_thread(proc.popen.wait, 10)
            await asyncio.sleep(f.hold_s)
            t = time.monotonic()
            await asyncio.to_thread(self.start_api, f.target)
            return (
                f"SIGKILL pid {pid}; restarted on :{self.api_ports[f.target]} after "
                f"{f.hold_s}s, ready in {time.monotonic() - t:.1f}s"
            )
        if f.kind == REDIS_RESTART:
            return await asyncio.to_thread(self.restart_redis, f.signal, f.hold_s)
        if f.kind == DELAYED_WRITE:
            return await self._delayed_write(f)
        # a burst: its invokes are acknowledged (or not) long after; the detail follows
        assert self.load is not None
        sid = self.session_ids[f.target]
        burst = asyncio.create_task(self.load.burst(sid, f.count))

        def done(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is None:
                acked = sum(r.acked for r in task.result())
                a.detail = f"{f.count} invokes at once, {acked} acknowledged"

        burst.add_done_callback(done)
        return f"{f.count} invokes at once"

    async def _runner_fault(self, f: Fault) -> str:
        i = f.target
        rid = self.runner_ids[i]
        proc = self.runner_procs[i]
        pid = proc.pid
        before = await asyncio.to_thread(self.incarnation, rid)
        if f.kind == RUNNER_STOP:
            proc.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(f.hold_s)
            finally:
                proc.signal(signal.SIGCONT)
            # past its deadline, the runner must fence itself and come back as a new
            # incarnation (docs/runner.md, self-fencing)
            again_s = await self._reregistered(rid, before)
            back = (
                f"re-registered as a new incarnation in {again_s:.2f}s"
                if again_s is not None
                else "NOT re-registered within 20s"
            )
            ttl_ms = self.cfg.replica_ttl_ms
            return f"SIGSTOP pid {pid} for {f.hold_s}s (TTL {ttl_ms} ms), SIGCONT; {back}"
        if f.kind == RUNNER_KILL:
            proc.signal(signal.SIGKILL)
            await asyncio.to_thread(proc.popen.wait, 10)
            how = "SIGKILL"
        else:
            t = time.monotonic()
            proc.signal(signal.SIGTERM)
            bound_s = DRAIN_TIMEOUT_S + 15
            try:
                code = await asyncio.to_thread(proc.popen.wait, bound_s)
                how = f"SIGTERM, exit {code} after {time.monotonic() - t:.1f}s"
                if code == -signal.SIGKILL:  # a poison input reached it while draining
                    self.runner_deaths.append(f"{rid} pid {pid} SIGKILLed while draining")
            except subprocess.TimeoutExpired:
                proc.kill()
                how = f"SIGTERM, still running after {bound_s}s: killed"
                self.notes.append(
                    f"{rid} did not exit within {bound_s}s of SIGTERM (log {proc.log_path})"
                )
        await asyncio.sleep(f.hold_s)
        up_s = await asyncio.to_thread(self.start_runner, i, before)
        return f"{how} (pid {pid}); restarted after {f.hold_s}s, registered in {up_s:.1f}s"

    async def _delayed_write(self, f: Fault) -> str:
        """Pause an API, then a runner shipping through it past its TTL; wake the API first."""
        api = self.api_procs[f.target]
        rid = self.runner_ids[f.partner]
        runner = self.runner_procs[f.partner]
        before = await asyncio.to_thread(self.incarnation, rid)
        refused_before = self.stale_refusals()
        api.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(DELAYED_WRITE_LEAD_S)  # the runner's requests queue up in it
            runner.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(f.hold_s)  # past the TTL: its sessions are taken over
            finally:
                api.signal(signal.SIGCONT)  # the old owner's requests now meet new tokens
                await asyncio.sleep(1.0)
        finally:
            api.signal(signal.SIGCONT)
            runner.signal(signal.SIGCONT)
        again_s = await self._reregistered(rid, before)
        refused = self.stale_refusals() - refused_before
        return (
            f"SIGSTOP api-{f.target + 1}, then {rid} for {f.hold_s}s; SIGCONT both; "
            f"{refused} stale writes refused since; "
            + (f"re-registered in {again_s:.2f}s" if again_s is not None else "NOT re-registered")
        )

    # -- operator actions and the poison input (issue 13) ---------------------------------

    def _api_base(self, prefer: int = 0) -> str:
        """An API that is up (a fault may have one down), ``prefer`` first."""
        n = len(self.api_procs)
        for k in range(n):
            i = (prefer + k) % n
            if self.api_procs[i].alive():
                return f"http://127.0.0.1:{self.api_ports[i]}"
        return f"http://127.0.0.1:{self.api_ports[prefer % n]}"

    def _http(self) -> httpx.AsyncClient:
        if self._admin is None:
            self._admin = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {self._fleet().admin_token}"},
                timeout=ADMIN_TIMEOUT_S,
            )
        return self._admin

    async def _call(self, method: str, path: str, prefer: int = 0, **kwargs: Any) -> httpx.Response:
        """One operator call, tried on the APIs in turn for up to ``ADMIN_TIMEOUT_S`` (one
        may be killed or paused by another fault): the first answer below 500."""
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        error = ""
        k = prefer
        while time.monotonic() < deadline:
            try:
                resp = await self._http().request(method, self._api_base(k) + path, **kwargs)
                if resp.status_code < 500:
                    return resp
                error = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            k += 1
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{method} {path}: no answer below 500 in {ADMIN_TIMEOUT_S}s ({error})")

    def _meta(self, ref: str) -> dict[str, str]:
        try:
            meta = self._client().hgetall(KEYS.session_ref(ref).meta)
            return {str(k): str(v) for k, v in meta.items()}
        except redis.RedisError:
            return {}

    async def _wait_active(self, ref: str, run_id: str | None, timeout_s: float) -> str:
        """The session's active run once it is ``run_id`` (or whatever is active at the
        deadline; "" when none): the action then cuts a running run, not a queued one."""
        deadline = time.monotonic() + timeout_s
        active = ""
        while time.monotonic() < deadline:
            active = (await asyncio.to_thread(self._meta, ref)).get("active_run_id", "")
            if run_id and active == run_id:
                break
            await asyncio.sleep(0.1)
        return active

    def _long_input(self) -> dict[str, Any]:
        # ~4 s: the action lands in the middle of it
        return {"text": "operator", "chunks": 8, "delay_ms": 500}

    async def _force_release(self, f: Fault, a: AppliedFault) -> str:
        """An SRE's break-glass release of a session whose run is running, with a reason."""
        assert self.load is not None
        sid = self.session_ids[f.target]
        ref = f"default/{sid}"
        n = sum(x.kind == "force_release" for x in self.actions) + 1
        reason = f"chaos-force-release-{n}"  # unique: the checker looks for it in the log
        rec = await self.load.invoke(sid, "detached", self._long_input())
        active = await self._wait_active(ref, rec.run_id, 15)
        resp = await self._call(
            "POST", f"/admin/locks/{sid}/release", f.target, params={"reason": reason}
        )
        if resp.status_code != 200:
            raise RuntimeError(f"force release answered {resp.status_code}: {resp.text[:200]}")
        before = resp.json().get("before") or {}
        held = before.get("state") == "held"
        self.actions.append(
            OperatorAction(
                "force_release",
                ref,
                time.time_ns(),
                run_id=active or None,
                reason=reason,
                held=held,
            )
        )
        return (
            f"released ({before.get('state')}, holder {before.get('holder')}, token "
            f"{before.get('token')}) with reason {reason!r}; active run {active or 'none'}"
        )

    async def _delete(self, f: Fault) -> str:
        """DELETE a session with a run active and two more inputs queued behind it."""
        assert self.load is not None
        sid = self.session_ids[f.target]
        ref = f"default/{sid}"
        first = self.load.submit(sid, "detached", self._long_input())
        active = ""
        for _ in range(150):  # the run id is known once the API answers; wait for it to run
            await asyncio.sleep(0.1)
            active = (await asyncio.to_thread(self._meta, ref)).get("active_run_id", "")
            if first.done() or active:
                break
        active = await self._wait_active(ref, first.result().run_id if first.done() else None, 5)
        for _ in range(2):
            self.load.submit(sid, "detached")
        await asyncio.sleep(0.3)  # both enqueued before the delete (their 202 comes later)
        resp = await self._call("DELETE", f"/v1/sessions/{sid}", f.target)
        if resp.status_code != 200:
            raise RuntimeError(f"delete answered {resp.status_code}: {resp.text[:200]}")
        self.actions.append(OperatorAction("delete", ref, time.time_ns(), run_id=active or None))
        return f"deleted with run {active or 'none'} active and 2 inputs queued"

    async def _post_event(self, key: str, input: Any, prefer: int) -> InvokeRecord:
        """One event for a routed key, as an invoke record of the session it reached."""
        body = {"type": "chaos", "payload": {"key": key, "input": input}}
        sent_ns = time.time_ns()
        status: int | None = None
        api = self._api_base(prefer)
        deadline = time.monotonic() + 20
        k = prefer
        while time.monotonic() < deadline:
            api = self._api_base(k)
            try:
                resp = await self._http().post(f"{api}/v1/events/{ROUTE_SOURCE}", json=body)
                status = resp.status_code
                if status == 202:
                    items: list[dict[str, Any]] = resp.json().get("sessions") or []
                    item = items[0] if items else {}
                    ref = f"default/{item.get('session_id')}"
                    run_id = item.get("run_id")
                    self.extra_refs[ref] = None
                    rec = InvokeRecord(
                        session=ref,
                        run_id=run_id,
                        mode="event",
                        acked=bool(run_id) and item.get("action") in ("started", "queued"),
                        api=api,
                        sent_ns=sent_ns,
                        acked_ns=time.time_ns(),
                        status=status,
                    )
                    self.event_records.append(rec)
                    return rec
                if status < 500:
                    break
            except httpx.HTTPError:
                status = None
            k += 1
            await asyncio.sleep(0.2)
        # not acknowledged: an event the checker does not expect to run (a retry after a lost
        # answer could deliver twice: events have no idempotency key yet)
        rec = InvokeRecord("", None, "event", False, api, sent_ns, None, status)
        self.event_records.append(rec)
        return rec

    async def _route_reset(self, f: Fault) -> str:
        """Events for a routed key (one running, more queued), a manual reset of the key while
        its run runs, then one event more. A reset never happens under a running run: it is
        deferred, so that event joins the busy generation; none of the inputs may be lost."""
        key = route_key(f.target)
        first = await self._post_event(key, self._long_input(), f.target)
        for _ in range(f.count):
            await self._post_event(key, {"text": "queued", "chunks": 2, "delay_ms": 50}, f.target)
        if not first.acked:
            raise RuntimeError(f"the first event for {key} was not acknowledged ({first.status})")
        active = await self._wait_active(first.session, first.run_id, 15)
        resp = await self._call(
            "POST", f"/admin/routes/{ROUTE_ID}/reset", f.target, json={"session_key": key}
        )
        if resp.status_code != 200:
            raise RuntimeError(f"reset answered {resp.status_code}: {resp.text[:200]}")
        after = await self._post_event(key, {"text": "after", "chunks": 2, "delay_ms": 50}, 0)
        self.actions.append(
            OperatorAction("reset", first.session, time.time_ns(), run_id=active or None)
        )
        moved = after.session != first.session
        return (
            f"{1 + f.count} events, reset with run {active or 'none'} active; next event went "
            + (f"to a new generation {after.session} (EARLY)" if moved else "to the busy one")
        )

    async def _poison(self, f: Fault, a: AppliedFault) -> str:
        """An input that SIGKILLs every runner that runs it, in a session of its own."""
        assert self.load is not None
        sid = poison_session(f.target)
        ref = f"default/{sid}"
        self.extra_refs[ref] = None
        deaths = len(self.runner_deaths)
        rec = await self.load.invoke(sid, "detached", {"poison": True, "text": "poison"})
        if not rec.acked or not rec.run_id:
            raise RuntimeError(f"the poison input was not acknowledged ({rec.status})")
        self.actions.append(OperatorAction("poison", ref, time.time_ns(), run_id=rec.run_id))
        left = await wait_terminal(self._redis().url, [rec], POISON_BUDGET_S)
        killed = len(self.runner_deaths) - deaths
        state = "still not ended" if left else "ended"
        return f"poison run {rec.run_id}: {state} after {killed} runner deaths"

    async def _settle_poison(self) -> None:
        """After the faults: give the poison runs their bounded time to end (the supervisor
        keeps restarting their casualties meanwhile)."""
        poisons = [
            InvokeRecord(x.session, x.run_id, "detached", True, "", 0, 0, 202)
            for x in self.actions
            if x.kind == "poison"
        ]
        if poisons:
            bound_s = self.cfg.poison_max_owners * (self.cfg.replica_ttl_ms / 1000 + 4) + 5
            await wait_terminal(self._redis().url, poisons, bound_s)

    async def _supervise(self) -> None:
        """Start again any runner that died with no fault on it (a poison input's casualty),
        the way a StatefulSet restarts a pod: the fleet keeps its size."""
        while True:
            await asyncio.sleep(0.25)
            for i, lock in enumerate(self._runner_locks):
                if lock.locked() or self.runner_procs[i].alive():
                    continue
                async with lock:  # a fault on this runner waits until it is back
                    proc = self.runner_procs[i]
                    if proc.alive():
                        continue
                    rid = self.runner_ids[i]
                    death = f"{rid} pid {proc.pid} exit {proc.popen.poll()} at +{self.now_s():.1f}s"
                    self.runner_deaths.append(death)
                    self.say(f"+{self.now_s():.1f}s runner died outside the faults: {death}")
                    before = await asyncio.to_thread(self.incarnation, rid)
                    try:
                        await asyncio.to_thread(self.start_runner, i, before)
                    except Exception as exc:  # reported; the next round tries again
                        self.errors.append(f"{rid} could not be restarted: {exc}")

    async def _drain(self, f: Fault) -> str:
        """The operator's drain (admin API), then a new runner with the same id."""
        i = f.target
        rid = self.runner_ids[i]
        proc = self.runner_procs[i]
        pid = proc.pid
        before = await asyncio.to_thread(self.incarnation, rid)
        t = time.monotonic()
        resp = await self._call("POST", f"/admin/replicas/{rid}/drain", i)
        if resp.status_code != 200:
            raise RuntimeError(f"drain answered {resp.status_code}: {resp.text[:200]}")
        bound_s = DRAIN_TIMEOUT_S + 15
        try:
            code = await asyncio.to_thread(proc.popen.wait, bound_s)
            how = f"drained, exit {code} after {time.monotonic() - t:.1f}s"
            if code == -signal.SIGKILL:  # a poison input reached it while draining
                self.runner_deaths.append(f"{rid} pid {pid} SIGKILLed while draining")
        except subprocess.TimeoutExpired:
            proc.kill()
            how = f"still running {bound_s}s after the drain: killed"
            self.notes.append(f"{rid} did not exit within {bound_s}s of its drain")
        await asyncio.sleep(f.hold_s)
        up_s = await asyncio.to_thread(self.start_runner, i, before)
        return f"{how} (pid {pid}); restarted after {f.hold_s}s, registered in {up_s:.1f}s"

    def stale_refusals(self) -> int:
        """Ingest attempts the API refused as stale so far, from the audit: read on from where
        the last call stopped (called on the loop, so never two at once)."""
        with contextlib.suppress(OSError), open(self.audit_path, "rb") as f:
            f.seek(self._audit_pos)
            chunk = f.read()
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written: next time
            self._audit_pos += len(chunk)
            for line in chunk.splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):  # a torn line
                    self._stale_seen += orjson.loads(line).get("outcome") == "stale_token"
        return self._stale_seen

    async def ensure_up(self) -> None:
        """After the faults: every process continued and running, Redis up (noted if fixed)."""
        for p in self.runner_procs:
            p.signal(signal.SIGCONT)
        server = self._redis()
        if server.proc is None or server.proc.poll() is not None:
            self.notes.append("redis-server was down after the faults: started")
            await asyncio.to_thread(server.start)
        for i, p in enumerate(self.api_procs):
            if not p.alive():
                self.notes.append(f"api-{i + 1} was down after the faults: started")
                await asyncio.to_thread(self.start_api, i)
        for i in range(len(self.runner_procs)):
            async with contextlib.AsyncExitStack() as stack:
                if i < len(self._runner_locks):  # the supervisor may be restarting it
                    await stack.enter_async_context(self._runner_locks[i])
                if not self.runner_procs[i].alive():
                    self.notes.append(f"{self.runner_ids[i]} was down after the faults: started")
                    await asyncio.to_thread(self.start_runner, i, None)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> ChaosResult:
        cfg = self.cfg
        started = time.monotonic()
        self.say(f"chaos seed {cfg.seed} (replay: {cfg.replay_command()})")
        self.say(f"workdir {self.workdir}")
        await asyncio.to_thread(self.start_fleet)
        self.say(
            f"fleet up in {time.monotonic() - started:.1f}s: redis :{self._redis().port} (AOF, "
            f"appendfsync always), APIs {', '.join(str(p) for p in self.api_ports)}, runners "
            f"{', '.join(self.runner_ids)} (replica TTL {cfg.replica_ttl_ms} ms)"
        )
        self.say(f"schedule ({len(self.schedule)} faults):")
        for a in self.applied:
            f = a.fault
            extra = f" hold {f.hold_s}s" if f.hold_s else ""
            extra += f" {f.signal}" if f.signal else ""
            extra += f" x{f.count}" if f.count else ""
            self.say(f"  +{f.at_s:5.1f}s {f.kind:<15} {a.target_name}{extra}")
        load = LoadGen(
            LoadConfig(
                api_urls=[f"http://127.0.0.1:{p}" for p in self.api_ports],
                session_ids=self.session_ids,
                rate_per_s=cfg.rate_per_s,
                stream_fraction=cfg.stream_fraction,
                seed=cfg.seed,
                submit_deadline_s=cfg.submit_deadline_s,
                key_prefix="chaos",
            )
        )
        self.load = load
        try:
            return await self._run(load, started)
        finally:
            await load.aclose()
            if self._admin is not None:
                await self._admin.aclose()

    async def _run(self, load: LoadGen, started: float) -> ChaosResult:
        cfg = self.cfg
        self.t0 = time.monotonic()
        load.start()
        locks: dict[str, asyncio.Lock] = {}
        for i in range(cfg.runners):
            locks[f"runner:{i}"] = asyncio.Lock()
        self._runner_locks = list(locks.values())  # the supervisor's view: a fault owns it
        for i in range(cfg.sessions):
            locks[f"session:{i}"] = asyncio.Lock()
        for i in range(cfg.apis):
            locks[f"{API_KILL}:{i}"] = asyncio.Lock()
        locks[f"{REDIS_RESTART}:0"] = asyncio.Lock()
        limits = {
            "runner": asyncio.Semaphore(max(1, cfg.runners // 2)),
            API_KILL: asyncio.Semaphore(max(1, cfg.apis - 1)),
        }
        tasks = [asyncio.create_task(self._fault(a, locks, limits)) for a in self.applied]
        progress = asyncio.create_task(self._progress(load))
        supervisor = asyncio.create_task(self._supervise())
        try:
            await asyncio.sleep(max(0.0, cfg.duration_s - self.now_s()))
            self.say(f"+{self.now_s():.1f}s fault phase over: waiting for faults to finish")
            _, late = await asyncio.wait(tasks, timeout=120)
            for t in late:
                t.cancel()
            if late:
                self.errors.append(f"{len(late)} faults still running 120 s after the fault phase")
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.ensure_up()
            await load.stop()
            await self._settle_poison()
            self.say(f"+{self.now_s():.1f}s load stopped: waiting for every invoke's answer")
            if not await load.drain(cfg.submit_deadline_s + 15):
                self.errors.append("some invokes were neither acknowledged nor given up")
            unsettled = await self._settle(load)
            await load.wait_streams(5)
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        finally:
            progress.cancel()
            supervisor.cancel()
            for t in tasks:
                t.cancel()
        # the audit first: logs only grow, so every seq it names is in the logs read after
        audit = await asyncio.to_thread(read_audit, str(self.audit_path))
        logs = await asyncio.to_thread(self._read_logs)
        report = check_history(
            audit,
            [*load.records, *self.event_records],
            logs,
            actions=self.actions,
            poison_max_owners=cfg.poison_max_owners,
            runner_deaths=len(self.runner_deaths),
        )
        outcomes = Counter(str(r.get("outcome")) for r in audit)
        interrupted = sum(
            1 for entries in logs.values() for e in entries if e.get("type") == "run.interrupted"
        )
        s = load.stats
        return ChaosResult(
            config=cfg,
            schedule=self.schedule,
            applied=self.applied,
            report=report,
            load={
                "sent": s.sent,
                "acked": s.acked,
                "gave_up": s.gave_up,
                "resubmits": s.resubmits,
                "stream_resumes": s.stream_resumes,
                "streams_finished": s.streams_finished,
                "throttled": s.throttled,
                "statuses": dict(s.statuses),
            },
            latency_ms=load.latency_ms(),
            ingest={
                "attempts": len(audit),
                "accepted": outcomes["accepted"],
                "stale_token": outcomes["stale_token"],
                "seq_gap": outcomes["seq_gap"],
                "not_owner": outcomes["not_owner"],
                "takeovers": report.stats.get("takeovers", 0),
                "interrupted": interrupted,
            },
            errors=self.errors,
            notes=self.notes,
            unsettled=unsettled,
            elapsed_s=time.monotonic() - started,
            workdir=str(self.workdir) if cfg.keep else None,
        )

    def _read_logs(self) -> dict[str, list[dict[str, str]]]:
        client = redis.Redis.from_url(self._redis().url, decode_responses=True)
        try:
            refs = [f"default/{sid}" for sid in self.session_ids] + list(self.extra_refs)
            return read_logs(client, KEYS, refs)
        finally:
            client.close()

    async def _settle(self, load: LoadGen) -> int:
        """Wait until every acknowledged run is terminal (bounded); the number still open."""
        records = [*load.records, *self.event_records]
        acked = len({(r.session, r.run_id) for r in records if r.acked and r.run_id})
        self.say(f"+{self.now_s():.1f}s settling: {acked} acknowledged runs to finish")
        return await wait_terminal(
            self._redis().url,
            records,
            self.cfg.settle_timeout_s,
            progress=lambda n: self.say(f"+{self.now_s():.1f}s settling: {n} runs open"),
        )

    async def _progress(self, load: LoadGen) -> None:
        while True:
            await asyncio.sleep(10)
            s = load.stats
            self.say(
                f"+{self.now_s():.1f}s load: {s.sent} sent, {s.acked} acknowledged, "
                f"{s.sent - s.acked - s.gave_up} waiting, {s.resubmits} resubmits"
            )


def run_chaos(cfg: ChaosConfig, out: Callable[[str], None] | None = None) -> ChaosResult:
    """One chaos run, start to teardown (also on Ctrl-C); ``out`` gets progress lines."""
    harness = Harness(cfg, out or (lambda line: print(line, file=sys.stderr, flush=True)))
    try:
        return asyncio.run(harness.run())
    finally:
        harness.teardown()


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(
    *,
    duration: str = "60s",
    seed: int | None = None,
    runners: int = 4,
    apis: int = 2,
    sessions: int = 200,
    rate: float = 10.0,
    output: str = "table",
    keep: bool = False,
    faults: str = "",
) -> int:
    """``streamward chaos``: 0 when every check holds, 1 when not, 2 on bad options."""
    if output not in ("table", "json"):
        print(f"unknown output {output!r}: table or json", file=sys.stderr)
        return 2
    try:
        duration_s = parse_duration(duration)
        cfg = ChaosConfig(
            seed=seed if seed is not None else secrets.randbelow(2**31),
            duration_s=duration_s,
            runners=runners,
            apis=apis,
            sessions=sessions,
            rate_per_s=rate,
            keep=keep,
            faults=faults,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stream: TextIO = sys.stderr if output == "json" else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)  # clean up like on Ctrl-C
    # explicitly: a shell starting us in the background sets SIGINT to ignored, and asyncio
    # only turns Ctrl-C into a clean cancellation when the default handler is in place
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_chaos(cfg, say)
    except (KeyboardInterrupt, _Terminated):
        print(
            f"\ninterrupted; every process was stopped. seed {cfg.seed}: {cfg.replay_command()}",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if output == "json":
        print(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        say(result.summary())
    return 0 if result.ok else 1
