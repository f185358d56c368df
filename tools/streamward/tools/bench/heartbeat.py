"""``streamward bench heartbeat``: what keeping N session leases alive costs.

Measured in one run, against one Redis server, at each level of leases held (0, 1 000,
10 000, 100 000 up to ``--leases``, and ``--leases`` itself):

* **batch**: renewing every held session lease through ``LeaseStore.renew_many``
  (``renewLeases-n``, chunks of 100 keys per script call, all chunks pipelined in one round
  trip); the median of 5 rounds after a warm-up round;
* **baselines**: the same renewals one lock at a time, each call awaited (what a naive
  per-lease heartbeat does), with redis-py's ``redis.asyncio.lock.Lock.extend`` and with
  python-redis-lock's ``redis_lock.Lock.extend`` (synchronous client, as that library wants);
  the fastest of 3 passes each, rounds of all three methods interleaved. One-by-one calls are
  bound by the round-trip time, which on a small VM swings with whether the scheduler puts
  client and server on the same CPU; their best pass keeps the ratio from flattering us;
* **replica heartbeat**: time per ``LeaseStore.renew_replica`` call and Redis commands per
  tick (``INFO commandstats`` deltas): the two-level lease design makes it O(1) in the number
  of sessions held. A PING round trip measured in the same run is its floor;
* Redis commands and Redis CPU (``INFO cpu``) per renewal round of every method, and from
  them the steady-state load of keeping the leases alive at the runner's default intervals;
* **memory per lease** at the top level: ``MEMORY USAGE`` of a sample of lease hashes and
  epoch counters plus the replica's lease-index set divided by the leases held, beside the
  key of a redis-py lock and of a python-redis-lock lock taken for the same sessions.

Leases and locks are set up with pipelines (1 000 per round trip) so 100 000 is quick; only
the renewals are timed. It starts its own throwaway ``redis-server`` unless ``--redis-url``
is given. On a shared Redis every key it writes lives under a fresh ``swbench-<hex>`` prefix
and is deleted at the end; other traffic on that server would blur the counts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamward.lua.client import connect
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.leases import RENEW_CHUNK
from streamward.lua.loader import execute_pipeline
from streamward.lua.scripts import parse_grant
from streamward.lua.store import LeaseStore
from streamward.tools.server import RedisServer

TARGET_RATIO = 30.0
# long TTLs: with 100 000 leases the bench spends tens of seconds between two renewals of
# the same lease (setup, other methods); the TTL does not change what a renewal costs
LEASE_TTL_MS = 600_000
REPLICA_TTL_MS = 600_000
LEVELS = (1_000, 10_000, 100_000)  # leases held at which everything is measured
BATCH_ROUNDS = 5  # timed renew_many rounds (after one warm-up round); the median is reported
ONE_BY_ONE_ROUNDS = 3  # timed passes of each one-by-one baseline; the median is reported
HEARTBEAT_TICKS = 200  # renew_replica calls per measured level
PING_ROUNDS = 500
SETUP_BATCH = 1_000  # leases / locks set up per pipelined round trip (not timed)
MEMORY_SAMPLE = 200  # keys of each kind sampled with MEMORY USAGE
# the runner's defaults (runner/config.py): what the steady-state load is computed for
DEFAULT_LEASE_RENEW_S = 20.0  # lease TTL 60 s / 3
DEFAULT_HEARTBEAT_S = 1.25  # replica TTL 5 s / 4
PRL_HINT = "python-redis-lock is not installed: pip install 'streamward[bench]'"


def prl_version() -> str:
    """Version of python-redis-lock (a baseline: the bench extra installs it)."""
    try:
        return metadata.version("python-redis-lock")
    except metadata.PackageNotFoundError:
        return "?"


def levels_for(leases: int) -> list[int]:
    """Leases held at each measured level: 0, the standard levels below ``leases``, ``leases``."""
    return [0, *(n for n in LEVELS if n < leases), leases]


@dataclass
class HeartbeatLevel:
    leases_held: int
    us_per_call: float  # mean
    commands_per_tick: float
    commands: dict[str, float] = field(default_factory=dict)
    redis_cpu_us_per_call: float = 0.0
    us_p50: float = 0.0  # the median and p99 are what a neighbour's burst of load moves least
    us_p99: float = 0.0


@dataclass
class Pass:
    """One renewal method renewing every lease held at one level."""

    renewals: int
    seconds: list[float]  # every timed round
    round_trips: int  # client round trips per round
    commands: dict[str, float]  # Redis commands per round (those run inside scripts included)
    redis_cpu_s: float  # Redis process CPU per round (INFO cpu, user + sys)
    # "median" for streamward; "min" for the one-by-one baselines: their speed is bound by
    # the round-trip time, which swings with where the scheduler puts client and server, and
    # their fastest pass keeps the ratio from flattering streamward
    pick: str = "median"

    @property
    def seconds_used(self) -> float:
        return min(self.seconds) if self.pick == "min" else statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.renewals / self.seconds_used

    @property
    def commands_per_round(self) -> float:
        return sum(self.commands.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "renewals": self.renewals,
            "seconds": self.seconds_used,
            "seconds_pick": self.pick,
            "seconds_all": self.seconds,
            "renewals_per_s": self.rate,
            "round_trips": self.round_trips,
            "commands_per_round": self.commands_per_round,
            "commands": self.commands,
            "redis_cpu_s": self.redis_cpu_s,
            "redis_cpu_us_per_renewal": self.redis_cpu_s / self.renewals * 1e6,
        }


@dataclass
class Level:
    leases_held: int
    heartbeat: HeartbeatLevel
    batch: Pass | None = None  # None at 0 leases held
    lock: Pass | None = None
    prl: Pass | None = None

    def steady_state(self) -> dict[str, Any]:
        """Redis load of keeping the leases alive at the runner's default intervals."""
        hb = self.heartbeat

        def load(p: Pass, heartbeat: bool) -> dict[str, float]:
            rt = p.round_trips / DEFAULT_LEASE_RENEW_S
            cmds = p.commands_per_round / DEFAULT_LEASE_RENEW_S
            cpu = p.redis_cpu_s / DEFAULT_LEASE_RENEW_S
            if heartbeat:  # streamward also renews its replica lease; per-lock designs do not
                rt += 1 / DEFAULT_HEARTBEAT_S
                cmds += hb.commands_per_tick / DEFAULT_HEARTBEAT_S
                cpu += hb.redis_cpu_us_per_call / 1e6 / DEFAULT_HEARTBEAT_S
            return {
                "round_trips_per_s": rt,
                "commands_per_s": cmds,
                "redis_cpu_percent": cpu * 100,
            }

        assert self.batch and self.lock and self.prl
        return {
            "lease_renew_interval_s": DEFAULT_LEASE_RENEW_S,
            "replica_heartbeat_interval_s": DEFAULT_HEARTBEAT_S,
            "batch": load(self.batch, heartbeat=True),
            "lock_extend": load(self.lock, heartbeat=False),
            "python_redis_lock": load(self.prl, heartbeat=False),
        }

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leases_held": self.leases_held}
        if self.batch and self.lock and self.prl:
            out |= {
                "batch": self.batch.as_json(),
                "lock_extend": self.lock.as_json(),
                "python_redis_lock": self.prl.as_json(),
                "ratio": self.batch.rate / self.lock.rate,
                "ratio_python_redis_lock": self.batch.rate / self.prl.rate,
                "steady_state": self.steady_state(),
            }
        return out


@dataclass
class Memory:
    """Bytes per key (MEMORY USAGE ... SAMPLES 0, averaged over a sample of keys)."""

    leases_held: int
    sampled: int
    lease_hash: float
    epoch: float
    index_set: int  # the whole lease-index set of the replica
    meta: float
    lock_key: float
    prl_key: float

    @property
    def index_share(self) -> float:
        return self.index_set / self.leases_held

    @property
    def per_lease(self) -> float:
        return self.lease_hash + self.epoch + self.index_share

    def as_json(self) -> dict[str, Any]:
        return {
            "leases_held": self.leases_held,
            "sampled_keys": self.sampled,
            "lease_hash_bytes": self.lease_hash,
            "epoch_bytes": self.epoch,
            "index_set_bytes": self.index_set,
            "index_share_bytes": self.index_share,
            "per_lease_bytes": self.per_lease,
            "meta_bytes": self.meta,
            "lock_key_bytes": self.lock_key,
            "python_redis_lock_key_bytes": self.prl_key,
            "ratio_vs_lock": self.per_lease / self.lock_key,
            "ratio_vs_python_redis_lock": self.per_lease / self.prl_key,
        }


@dataclass
class Results:
    leases: int
    redis_version: str
    redis_url: str
    ping_us: float
    levels: list[Level]
    memory: Memory

    @property
    def top(self) -> Level:
        return self.levels[-1]

    @property
    def batch_seconds(self) -> list[float]:
        assert self.top.batch
        return self.top.batch.seconds

    @property
    def lock_seconds(self) -> float:
        assert self.top.lock
        return self.top.lock.seconds_used

    @property
    def prl_seconds(self) -> float:
        assert self.top.prl
        return self.top.prl.seconds_used

    @property
    def heartbeat(self) -> list[HeartbeatLevel]:
        return [lv.heartbeat for lv in self.levels]

    @property
    def batch_rate(self) -> float:
        return self.leases / statistics.median(self.batch_seconds)

    @property
    def lock_rate(self) -> float:
        return self.leases / self.lock_seconds

    @property
    def prl_rate(self) -> float:
        return self.leases / self.prl_seconds

    @property
    def ratio(self) -> float:
        return self.batch_rate / self.lock_rate

    @property
    def ratio_prl(self) -> float:
        return self.batch_rate / self.prl_rate

    @property
    def heartbeat_flat(self) -> bool:
        """Commands per replica heartbeat are the same whatever the number of leases held."""
        return len({round(h.commands_per_tick, 6) for h in self.heartbeat}) == 1

    def as_json(self) -> dict[str, Any]:
        top = self.top
        assert top.batch and top.lock and top.prl
        return {
            "bench": "heartbeat",
            "leases": self.leases,
            "redis_version": self.redis_version,
            "redis_url": self.redis_url,
            "batch": {
                "method": f"LeaseStore.renew_many (renewLeases-n, chunks of {RENEW_CHUNK}, "
                "pipelined)",
                "renewals": self.leases,
                "rounds": len(self.batch_seconds),
                "seconds_median": statistics.median(self.batch_seconds),
                "seconds_min": min(self.batch_seconds),
                "renewals_per_s": self.batch_rate,
                "round_trips": top.batch.round_trips,
                "commands_per_round": top.batch.commands_per_round,
            },
            "lock_extend": {
                "method": "redis.asyncio.lock.Lock.extend, one by one",
                "renewals": self.leases,
                "passes": len(top.lock.seconds),
                "seconds": self.lock_seconds,
                "renewals_per_s": self.lock_rate,
                "round_trips": top.lock.round_trips,
                "commands_per_round": top.lock.commands_per_round,
            },
            "python_redis_lock": {
                "method": f"redis_lock.Lock.extend (python-redis-lock {prl_version()}, sync "
                "client), one by one",
                "renewals": self.leases,
                "passes": len(top.prl.seconds),
                "seconds": self.prl_seconds,
                "renewals_per_s": self.prl_rate,
                "round_trips": top.prl.round_trips,
                "commands_per_round": top.prl.commands_per_round,
            },
            "ratio": self.ratio,
            "ratio_python_redis_lock": self.ratio_prl,
            "target_ratio": TARGET_RATIO,
            "target_met": self.ratio >= TARGET_RATIO,
            "target_met_python_redis_lock": self.ratio_prl >= TARGET_RATIO,
            "ping_us": self.ping_us,
            "heartbeat": [
                {
                    "leases_held": h.leases_held,
                    "us_per_call": h.us_per_call,
                    "commands_per_tick": h.commands_per_tick,
                    "commands": h.commands,
                    "redis_cpu_us_per_call": h.redis_cpu_us_per_call,
                    "us_p50": h.us_p50,
                    "us_p99": h.us_p99,
                    "ping_ratio": h.us_p50 / self.ping_us,
                }
                for h in self.heartbeat
            ],
            "heartbeat_flat": self.heartbeat_flat,
            "levels": [lv.as_json() for lv in self.levels if lv.leases_held],
            "memory": self.memory.as_json(),
        }


def main(leases: int, output: str, redis_url: str | None) -> int:
    """Run the benchmark; print a table (or one JSON object with ``output="json"``)."""
    err = Console(stderr=True)
    if output not in ("table", "json"):
        err.print(f"[red]unknown output {output!r}: use table or json[/red]")
        return 2
    if leases < 1:
        err.print("[red]--leases must be at least 1[/red]")
        return 2
    if importlib.util.find_spec("redis_lock") is None:
        err.print(PRL_HINT, style="red", markup=False)
        return 2
    server: RedisServer | None = None
    if redis_url is None:
        server = RedisServer().start()
        redis_url = server.url
    try:
        results = asyncio.run(_run(redis_url, leases, err))
    finally:
        if server is not None:
            server.cleanup()
    if output == "json":
        sys.stdout.write(orjson.dumps(results.as_json()).decode() + "\n")
        sys.stdout.flush()
    else:
        _print_table(results, Console())
    return 0


class _Bench:
    """The keys, leases and locks of one run, set up level by level."""

    def __init__(self, url: str, n: int, progress: Progress) -> None:
        self.client = connect(url)
        # python-redis-lock only takes a synchronous client
        self.sync = redis.Redis.from_url(url)
        self.keys = Keys(f"swbench-{uuid.uuid4().hex[:8]}")
        self.store = LeaseStore(self.client, self.keys)
        self.replica, self.incarnation = "bench-replica", uuid.uuid4().hex
        self.sessions = [self.keys.session("bench", f"s{i}") for i in range(n)]
        # locks named like the session's own keys so their memory compares like for like
        self.lock_names = [f"{s.tag}:pylock" for s in self.sessions]
        self.prl_names = [f"{s.tag}:prlock" for s in self.sessions]
        self.held: list[tuple[SessionKeys, int]] = []
        self.locks: list[Lock] = []
        self.prls: list[Any] = []  # redis_lock.Lock
        self.progress = progress

    async def grow(self, level: int) -> None:
        """Acquire leases and take locks until ``level`` of each are held (pipelined)."""
        import redis_lock  # the bench extra's, so imported where used (main checked for it)

        todo = self.sessions[len(self.held) : level]
        if not todo:
            return
        task = self.progress.add_task(f"set up leases and locks (to {level:,})", total=len(todo))
        rk = self.keys.replica(self.replica)
        scripts = self.store.scripts
        acquire = scripts.script("acquireLease")
        for i in range(0, len(todo), SETUP_BATCH):
            part = todo[i : i + SETUP_BATCH]

            # what LeaseStore.acquire does per session (script, then the index SADD), batched
            def build(pipe: Any, part: Sequence[SessionKeys] = part) -> None:
                for s in part:
                    keys, args = scripts.acquire_lease_call(
                        s, self.replica, self.incarnation, LEASE_TTL_MS
                    )
                    acquire.queue(pipe, keys, args)
                pipe.sadd(rk.leases, *[s.ref for s in part])

            replies = await execute_pipeline(self.client, acquire, build)
            for s, r in zip(part, replies[:-1], strict=True):
                self.held.append((s, parse_grant("acquireLease", r).token))  # raises LeaseHeld

            # redis-py Lock.acquire is SET NX PX with a fresh token; same, pipelined
            start = len(self.locks)
            pipe = self.client.pipeline(transaction=False)
            for name in self.lock_names[start : start + len(part)]:
                lock = Lock(self.client, name, timeout=LEASE_TTL_MS / 1000)
                token = uuid.uuid1().hex.encode()
                pipe.set(name, token, nx=True, px=LEASE_TTL_MS)
                lock.local.token = token
                self.locks.append(lock)
            if not all(await pipe.execute()):
                raise RuntimeError("could not take every redis-py lock")

            # python-redis-lock's acquire is SET lock:<name> <id> NX EX; a given id marks held
            spipe = self.sync.pipeline(transaction=False)
            for name in self.prl_names[start : start + len(part)]:
                lock_id = uuid.uuid4().hex
                prl = redis_lock.Lock(self.sync, name, expire=LEASE_TTL_MS // 1000, id=lock_id)
                spipe.set(f"lock:{name}", lock_id, nx=True, ex=LEASE_TTL_MS // 1000)
                self.prls.append(prl)
            if not all(spipe.execute()):
                raise RuntimeError("could not take every python-redis-lock lock")
            self.progress.advance(task, len(part))

    async def renewals(self, level: int) -> tuple[Pass, Pass, Pass]:
        """Time every method renewing the first ``level`` leases / locks, rounds interleaved."""
        # interleaved (batch, redis-py, python-redis-lock, batch, ...) so that a neighbour's
        # load on a shared machine hits every method alike instead of one of them
        held = self.held[:level]
        locks, prls = self.locks[:level], self.prls[:level]
        ttl_ms = LEASE_TTL_MS

        async def batch() -> None:
            result = await self.store.renew_many(self.replica, self.incarnation, held, ttl_ms)
            if len(result.renewed) != level:
                raise RuntimeError(f"batch renewal lost leases: {result.lost[:5]}")

        async def lock_extend() -> None:
            for lock in locks:
                await lock.extend(ttl_ms / 1000, replace_ttl=True)

        async def prl_extend() -> None:
            for prl in prls:  # python-redis-lock is synchronous: each call blocks
                prl.extend(ttl_ms // 1000)

        # warm-up: script caches, connections, code paths
        await batch()
        await locks[0].extend(ttl_ms / 1000, replace_ttl=True)
        prls[0].extend(ttl_ms // 1000)
        runs: dict[str, list[tuple[float, float, dict[str, float]]]] = {
            "batch": [],
            "lock": [],
            "prl": [],
        }
        plan: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for r in range(max(BATCH_ROUNDS, ONE_BY_ONE_ROUNDS)):
            if r < BATCH_ROUNDS:
                plan.append(("batch", batch))
            if r < ONE_BY_ONE_ROUNDS:
                plan += [("lock", lock_extend), ("prl", prl_extend)]
        task = self.progress.add_task(f"renewals ({level:,} held)", total=len(plan))
        for name, fn in plan:
            runs[name].append(await self._timed(fn))
            self.progress.advance(task)

        def summary(name: str, round_trips: int, pick: str) -> Pass:
            rs = runs[name]
            commands: dict[str, float] = {}
            for _, _, cmds in rs:
                for k, v in cmds.items():
                    commands[k] = commands.get(k, 0) + v / len(rs)
            cpu = statistics.fmean(c for _, c, _ in rs)
            return Pass(level, [s for s, _, _ in rs], round_trips, commands, cpu, pick)

        # the batch is one pipelined write and read whatever the number of chunks
        return (
            summary("batch", 1, "median"),
            summary("lock", level, "min"),
            summary("prl", level, "min"),
        )

    async def _timed(
        self, fn: Callable[[], Awaitable[None]]
    ) -> tuple[float, float, dict[str, float]]:
        """Wall seconds, Redis CPU seconds and Redis commands of one call of ``fn``."""
        snap = await _snapshot(self.client)
        t0 = time.perf_counter()
        await fn()
        dt = time.perf_counter() - t0
        cpu, commands = await _since(self.client, snap, 1)
        return dt, cpu, commands

    async def memory(self) -> Memory:
        """MEMORY USAGE of a sample of each kind of key (SAMPLES 0: every field counted)."""
        n = len(self.held)
        idx = sorted({i * n // min(n, MEMORY_SAMPLE) for i in range(min(n, MEMORY_SAMPLE))})
        kinds: list[list[str]] = [
            [self.sessions[i].lease for i in idx],
            [self.sessions[i].epoch for i in idx],
            [self.sessions[i].meta for i in idx],
            [self.lock_names[i] for i in idx],
            [f"lock:{self.prl_names[i]}" for i in idx],
        ]
        pipe = self.client.pipeline(transaction=False)
        for names in kinds:
            for name in names:
                pipe.memory_usage(name, samples=0)
        pipe.memory_usage(self.keys.replica(self.replica).leases, samples=0)
        replies = await pipe.execute()
        if any(r is None for r in replies):
            raise RuntimeError("MEMORY USAGE found a sampled key missing")
        means = [statistics.fmean(replies[k * len(idx) : (k + 1) * len(idx)]) for k in range(5)]
        return Memory(
            leases_held=n,
            sampled=len(idx),
            lease_hash=means[0],
            epoch=means[1],
            meta=means[2],
            lock_key=means[3],
            prl_key=means[4],
            index_set=int(replies[-1]),
        )

    async def cleanup(self) -> None:
        """Delete every key the bench wrote (they all live under its own prefix)."""
        rk = self.keys.replica(self.replica)
        names = [rk.lease, rk.leases, rk.mail, self.keys.replicas, *self.lock_names]
        names += [f"lock:{n}" for n in self.prl_names]
        names += [f"lock-signal:{n}" for n in self.prl_names]
        for s in self.sessions:
            names += [s.lease, s.epoch, s.meta, s.history]
        for i in range(0, len(names), 1000):
            await self.client.unlink(*names[i : i + 1000])

    async def close(self) -> None:
        await self.client.aclose()
        self.sync.close()


async def _run(url: str, n: int, err: Console) -> Results:
    with _progress(err) as progress:
        b = _Bench(url, n, progress)
        try:
            info = await b.client.info("server")
            await b.store.scripts.load_all(b.client)
            await b.store.register_replica(b.replica, b.incarnation, REPLICA_TTL_MS)
            ping_us = await _ping_us(b.client)
            levels: list[Level] = []
            for level in levels_for(n):
                await b.grow(level)
                task = progress.add_task(f"replica heartbeat ({level:,} held)", total=None)
                hb = await _heartbeat(b.store, b.client, b.replica, b.incarnation, level)
                progress.update(task, total=1, completed=1)
                lv = Level(level, hb)
                if level:
                    lv.batch, lv.lock, lv.prl = await b.renewals(level)
                levels.append(lv)
            memory = await b.memory()
            return Results(
                leases=n,
                redis_version=str(info.get("redis_version", "?")),
                redis_url=_redact(url),
                ping_us=ping_us,
                levels=levels,
                memory=memory,
            )
        finally:
            await b.cleanup()
            await b.close()


async def _ping_us(client: aioredis.Redis) -> float:
    """Median PING round trip: the floor any one-call heartbeat sits on."""
    await client.ping()
    samples = []
    for _ in range(PING_ROUNDS):
        t0 = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


async def _heartbeat(
    store: LeaseStore, client: aioredis.Redis, replica: str, incarnation: str, held: int
) -> HeartbeatLevel:
    """Time HEARTBEAT_TICKS replica renewals and count the Redis commands they cost."""
    fields = {"leases": str(held), "inflight": "0"}
    await store.renew_replica(replica, incarnation, REPLICA_TTL_MS, fields)  # warm
    snap = await _snapshot(client)
    samples: list[float] = []
    for _ in range(HEARTBEAT_TICKS):
        t0 = time.perf_counter()
        await store.renew_replica(replica, incarnation, REPLICA_TTL_MS, fields)
        samples.append(time.perf_counter() - t0)
    cpu, per_tick = await _since(client, snap, HEARTBEAT_TICKS)
    samples.sort()
    return HeartbeatLevel(
        leases_held=held,
        us_per_call=statistics.fmean(samples) * 1e6,
        commands_per_tick=sum(per_tick.values()),
        commands=per_tick,
        redis_cpu_us_per_call=cpu * 1e6,
        us_p50=statistics.median(samples) * 1e6,
        us_p99=samples[math.ceil(0.99 * len(samples)) - 1] * 1e6,
    )


Snapshot = tuple[float, dict[str, int]]


async def _snapshot(client: aioredis.Redis) -> Snapshot:
    """Redis CPU so far, then calls per command so far."""
    return await _redis_cpu(client), await _commandstats(client)


async def _since(
    client: aioredis.Redis, snap: Snapshot, rounds: int
) -> tuple[float, dict[str, float]]:
    """Redis CPU seconds and commands per round since ``snap`` (the bench's INFO left out)."""
    after = await _commandstats(client)
    cpu = await _redis_cpu(client) - snap[0]
    delta = {k: after.get(k, 0) - snap[1].get(k, 0) for k in after}
    delta["info"] = delta.get("info", 0) - 1  # the first INFO commandstats is counted in this one
    return cpu / rounds, {k: v / rounds for k, v in sorted(delta.items()) if v > 0}


async def _commandstats(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command so far (commands run inside scripts included)."""
    raw: dict[str, Any] = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()}


async def _redis_cpu(client: aioredis.Redis) -> float:
    """CPU seconds the redis-server process has used (user + system)."""
    raw: dict[str, Any] = await client.info("cpu")
    return float(raw["used_cpu_user"]) + float(raw["used_cpu_sys"])


def _redact(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_table(r: Results, console: Console) -> None:
    rates = Table(title=f"Session lease renewal: {r.leases:,} leases, Redis {r.redis_version}")
    rates.add_column("method")
    rates.add_column("renewals/s", justify="right")
    rates.add_column("time for all", justify="right")
    rates.add_column("Redis CPU µs/renewal", justify="right")
    top = r.top
    assert top.batch and top.lock and top.prl
    rates.add_row(
        f"LeaseStore.renew_many (renewLeases-n, {RENEW_CHUNK}/call, pipelined)",
        f"{r.batch_rate:,.0f}",
        f"{statistics.median(r.batch_seconds) * 1000:,.1f} ms (median of {len(r.batch_seconds)})",
        f"{top.batch.redis_cpu_s / r.leases * 1e6:.2f}",
    )
    rates.add_row(
        "redis-py Lock.extend, one by one",
        f"{r.lock_rate:,.0f}",
        f"{r.lock_seconds * 1000:,.1f} ms (fastest of {len(top.lock.seconds)})",
        f"{top.lock.redis_cpu_s / r.leases * 1e6:.2f}",
    )
    rates.add_row(
        f"python-redis-lock {prl_version()} Lock.extend, one by one",
        f"{r.prl_rate:,.0f}",
        f"{r.prl_seconds * 1000:,.1f} ms (fastest of {len(top.prl.seconds)})",
        f"{top.prl.redis_cpu_s / r.leases * 1e6:.2f}",
    )
    console.print(rates)
    for name, ratio in (("redis-py Lock.extend", r.ratio), ("python-redis-lock", r.ratio_prl)):
        verdict = "[green]met[/green]" if ratio >= TARGET_RATIO else "[red]NOT met[/red]"
        console.print(
            f"ratio vs {name}: [bold]{ratio:,.1f}x[/bold] "
            f"(target >= {TARGET_RATIO:.0f}x: {verdict})"
        )

    scale = Table(title="Renewal throughput vs leases held (renewals/s)")
    for col in ("leases held", "renew_many", "redis-py", "python-redis-lock", "ratios"):
        scale.add_column(col, justify="right")
    for lv in r.levels:
        if lv.batch and lv.lock and lv.prl:
            scale.add_row(
                f"{lv.leases_held:,}",
                f"{lv.batch.rate:,.0f}",
                f"{lv.lock.rate:,.0f}",
                f"{lv.prl.rate:,.0f}",
                f"{lv.batch.rate / lv.lock.rate:,.1f}x / {lv.batch.rate / lv.prl.rate:,.1f}x",
            )
    console.print(scale)

    hb = Table(title="Replica heartbeat (renew_replica) cost vs leases held")
    hb.add_column("leases held", justify="right")
    hb.add_column("µs per heartbeat (p50 / mean)", justify="right")
    hb.add_column("Redis commands per tick", justify="right")
    hb.add_column("breakdown")
    for h in r.heartbeat:
        hb.add_row(
            f"{h.leases_held:,}",
            f"{h.us_p50:,.0f} / {h.us_per_call:,.0f}",
            f"{h.commands_per_tick:g}",
            ", ".join(f"{k} {v:g}" for k, v in h.commands.items()),
        )
    console.print(hb)
    flat = "[green]yes[/green]" if r.heartbeat_flat else "[red]NO[/red]"
    console.print(f"heartbeat commands independent of leases held: {flat}")
    console.print(f"PING round trip (same run): {r.ping_us:,.0f} µs")

    m = r.memory
    mem = Table(title=f"Memory per session lease (MEMORY USAGE, {m.sampled} keys sampled)")
    mem.add_column("part")
    mem.add_column("bytes", justify="right")
    mem.add_row("lease hash", f"{m.lease_hash:,.0f}")
    mem.add_row("epoch counter", f"{m.epoch:,.0f}")
    mem.add_row(f"lease-index set share (1/{m.leases_held:,})", f"{m.index_share:,.1f}")
    mem.add_row("[bold]per session lease[/bold]", f"[bold]{m.per_lease:,.0f}[/bold]")
    mem.add_row("redis-py lock key (baseline)", f"{m.lock_key:,.0f}")
    mem.add_row("python-redis-lock key (baseline)", f"{m.prl_key:,.0f}")
    console.print(mem)
    console.print(
        f"memory ratio: {m.per_lease / m.lock_key:.2f}x a redis-py lock, "
        f"{m.per_lease / m.prl_key:.2f}x a python-redis-lock lock"
    )
