"""``streamward bench heartbeat``: what keeping N session leases alive costs.

Measured in one run, against one Redis server:

* **batch**: renewing N session leases through ``LeaseStore.renew_many`` (``renewLeases-n``,
  chunks of 100 keys per script call, all chunks pipelined in one round trip);
* **baseline**: the same N renewals through redis-py's ``redis.asyncio.lock.Lock.extend``,
  one lock at a time, each call awaited (what a naive per-lease heartbeat does);
* **replica heartbeat**: time per ``LeaseStore.renew_replica`` call and Redis commands per
  tick (``INFO commandstats`` deltas) while the replica holds 0, 1 000 and N leases: the
  two-level lease design makes it O(1) in the number of sessions held.

It starts its own throwaway ``redis-server`` unless ``--redis-url`` is given. On a shared
Redis every key it writes lives under a fresh ``swbench-<hex>`` prefix and is deleted at the
end; other traffic on that server would blur the command counts.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lua.client import connect
from lua.keys import Keys, SessionKeys
from lua.server import RedisServer
from lua.store import RENEW_CHUNK, LeaseStore

TARGET_RATIO = 30.0
LEASE_TTL_MS = 60_000
REPLICA_TTL_MS = 60_000  # long: the bench pauses between heartbeats while it sets up leases
BATCH_ROUNDS = 5  # timed renew_many rounds (after one warm-up round); the median is reported
HEARTBEAT_TICKS = 200  # renew_replica calls per measured level
CONCURRENCY = 64  # in-flight calls while setting up leases and locks (not timed)
MID_LEVEL = 1_000


@dataclass
class HeartbeatLevel:
    leases_held: int
    us_per_call: float
    commands_per_tick: float
    commands: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    leases: int
    redis_version: str
    redis_url: str
    batch_seconds: list[float]
    lock_seconds: float
    heartbeat: list[HeartbeatLevel]

    @property
    def batch_rate(self) -> float:
        return self.leases / statistics.median(self.batch_seconds)

    @property
    def lock_rate(self) -> float:
        return self.leases / self.lock_seconds

    @property
    def ratio(self) -> float:
        return self.batch_rate / self.lock_rate

    @property
    def heartbeat_flat(self) -> bool:
        """Commands per replica heartbeat are the same whatever the number of leases held."""
        return len({round(h.commands_per_tick, 6) for h in self.heartbeat}) == 1

    def as_json(self) -> dict[str, Any]:
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
            },
            "lock_extend": {
                "method": "redis.asyncio.lock.Lock.extend, one by one",
                "renewals": self.leases,
                "seconds": self.lock_seconds,
                "renewals_per_s": self.lock_rate,
            },
            "ratio": self.ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": self.ratio >= TARGET_RATIO,
            "heartbeat": [
                {
                    "leases_held": h.leases_held,
                    "us_per_call": h.us_per_call,
                    "commands_per_tick": h.commands_per_tick,
                    "commands": h.commands,
                }
                for h in self.heartbeat
            ],
            "heartbeat_flat": self.heartbeat_flat,
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


async def _run(url: str, n: int, err: Console) -> Results:
    client = connect(url)
    keys = Keys(f"swbench-{uuid.uuid4().hex[:8]}")
    store = LeaseStore(client, keys)
    replica, incarnation = "bench-replica", uuid.uuid4().hex
    sessions = [keys.session("bench", f"s{i}") for i in range(n)]
    lock_names = [f"{keys.prefix}:lock:{i}" for i in range(n)]
    try:
        info = await client.info("server")
        await store.scripts.load_all(client)
        await store.register_replica(replica, incarnation, REPLICA_TTL_MS)
        levels = sorted({0, min(MID_LEVEL, n), n})
        held: list[tuple[SessionKeys, int]] = []
        heartbeat: list[HeartbeatLevel] = []
        with _progress(err) as progress:
            for level in levels:
                todo = sessions[len(held) : level]
                task = progress.add_task(f"acquire leases (to {level})", total=len(todo))

                async def acquire(task: Any, s: SessionKeys) -> tuple[SessionKeys, int]:
                    lease = await store.acquire(s, replica, incarnation, LEASE_TTL_MS)
                    progress.advance(task)
                    return s, lease.token

                held += await _bounded([functools.partial(acquire, task, s) for s in todo])
                task = progress.add_task(f"replica heartbeat ({level} held)", total=None)
                heartbeat.append(await _heartbeat(store, client, replica, incarnation, level))
                progress.update(task, total=1, completed=1)

            task = progress.add_task("batch renew (renew_many)", total=BATCH_ROUNDS + 1)
            batch_seconds: list[float] = []
            for round_ in range(BATCH_ROUNDS + 1):
                t0 = time.perf_counter()
                result = await store.renew_many(replica, incarnation, held, LEASE_TTL_MS)
                dt = time.perf_counter() - t0
                if len(result.renewed) != n:
                    raise RuntimeError(f"batch renewal lost leases: {result.lost[:5]}")
                if round_:  # round 0 warms up (script cache check, connections)
                    batch_seconds.append(dt)
                progress.advance(task)

            task = progress.add_task("create redis-py locks", total=n)
            locks = [Lock(client, name, timeout=LEASE_TTL_MS / 1000) for name in lock_names]

            async def take(task: Any, lock: Lock) -> bool:
                ok = await lock.acquire(blocking=False)
                progress.advance(task)
                return bool(ok)

            if not all(await _bounded([functools.partial(take, task, lk) for lk in locks])):
                raise RuntimeError("could not take every redis-py lock")
            await locks[0].extend(LEASE_TTL_MS / 1000, replace_ttl=True)  # warm the script
            task = progress.add_task("Lock.extend one by one", total=n)
            t0 = time.perf_counter()
            for i, lock in enumerate(locks):
                await lock.extend(LEASE_TTL_MS / 1000, replace_ttl=True)
                if i % 256 == 0:
                    progress.update(task, completed=i)
            lock_seconds = time.perf_counter() - t0
            progress.update(task, completed=n)
        return Results(
            leases=n,
            redis_version=str(info.get("redis_version", "?")),
            redis_url=_redact(url),
            batch_seconds=batch_seconds,
            lock_seconds=lock_seconds,
            heartbeat=heartbeat,
        )
    finally:
        await _cleanup(client, keys, replica, sessions, lock_names)
        await client.aclose()


async def _heartbeat(
    store: LeaseStore, client: aioredis.Redis, replica: str, incarnation: str, held: int
) -> HeartbeatLevel:
    """Time HEARTBEAT_TICKS replica renewals and count the Redis commands they cost."""
    fields = {"leases": str(held), "inflight": "0"}
    await store.renew_replica(replica, incarnation, REPLICA_TTL_MS, fields)  # warm
    before = await _commandstats(client)
    t0 = time.perf_counter()
    for _ in range(HEARTBEAT_TICKS):
        await store.renew_replica(replica, incarnation, REPLICA_TTL_MS, fields)
    dt = time.perf_counter() - t0
    after = await _commandstats(client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["info"] = delta.get("info", 0) - 1  # the first INFO is counted in the second one
    per_tick = {k: v / HEARTBEAT_TICKS for k, v in sorted(delta.items()) if v > 0}
    return HeartbeatLevel(
        leases_held=held,
        us_per_call=dt / HEARTBEAT_TICKS * 1e6,
        commands_per_tick=sum(per_tick.values()),
        commands=per_tick,
    )


async def _commandstats(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command so far (commands run inside scripts included)."""
    raw: dict[str, Any] = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()}


async def _bounded(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the calls with at most CONCURRENCY in flight; results in order."""
    out: list[Any] = []
    for i in range(0, len(calls), CONCURRENCY):
        out += await asyncio.gather(*(c() for c in calls[i : i + CONCURRENCY]))
    return out


async def _cleanup(
    client: aioredis.Redis,
    keys: Keys,
    replica: str,
    sessions: Sequence[SessionKeys],
    lock_names: Sequence[str],
) -> None:
    """Delete every key the bench wrote (they all live under its own prefix)."""
    rk = keys.replica(replica)
    names = [rk.lease, rk.leases, rk.mail, keys.replicas, *lock_names]
    for s in sessions:
        names += [s.lease, s.epoch, s.meta]
    for i in range(0, len(names), 1000):
        await client.unlink(*names[i : i + 1000])


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
    rates = Table(title=f"Session lease renewal: {r.leases} leases, Redis {r.redis_version}")
    rates.add_column("method")
    rates.add_column("renewals/s", justify="right")
    rates.add_column("time for all", justify="right")
    rates.add_row(
        f"LeaseStore.renew_many (renewLeases-n, {RENEW_CHUNK}/call, pipelined)",
        f"{r.batch_rate:,.0f}",
        f"{statistics.median(r.batch_seconds) * 1000:,.1f} ms (median of {len(r.batch_seconds)})",
    )
    rates.add_row(
        "redis-py Lock.extend, one by one",
        f"{r.lock_rate:,.0f}",
        f"{r.lock_seconds * 1000:,.1f} ms",
    )
    console.print(rates)
    verdict = "[green]met[/green]" if r.ratio >= TARGET_RATIO else "[red]NOT met[/red]"
    console.print(f"ratio: [bold]{r.ratio:,.1f}x[/bold] (target >= {TARGET_RATIO:.0f}x: {verdict})")

    hb = Table(title="Replica heartbeat (renew_replica) cost vs leases held")
    hb.add_column("leases held", justify="right")
    hb.add_column("µs per heartbeat", justify="right")
    hb.add_column("Redis commands per tick", justify="right")
    hb.add_column("breakdown")
    for h in r.heartbeat:
        hb.add_row(
            f"{h.leases_held:,}",
            f"{h.us_per_call:,.0f}",
            f"{h.commands_per_tick:g}",
            ", ".join(f"{k} {v:g}" for k, v in h.commands.items()),
        )
    console.print(hb)
    flat = "[green]yes[/green]" if r.heartbeat_flat else "[red]NO[/red]"
    console.print(f"heartbeat commands independent of leases held: {flat}")
