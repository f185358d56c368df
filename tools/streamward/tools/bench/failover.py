"""``streamward bench failover``: how fast a session gets a new owner when its owner goes.

One throwaway ``redis-server``, one ``streamward api`` and three ``streamward runner``
processes (echo handler), all started here with ``api.fleet.Fleet``. Two kinds of trials:

* **kill -9**: a session runs a long echo run; its owner is SIGKILLed at a random point of
  its heartbeat cycle. Measured: from the kill to the ``run.started`` (attempt 2) written by
  the new owner. Nothing tells the fleet; the replica lease has to expire and the watchdog
  has to notice, so the figure is bounded by the replica TTL. Target: p99 <= TTL + 1 s.
* **SIGTERM**: a session is owned (idle) by a runner; the runner gets SIGTERM and the session
  is invoked at once. Measured: from the signal to the ``run.started`` of that invocation
  by another replica (the draining runner releases at once, nobody waits for a TTL).
  Target: p99 <= 300 ms. A trial where the old owner still started the run (its mailbox
  beat the signal) is counted as ``raced`` and left out.

Times come from the same host clock: the signal is stamped with ``time.time()`` just before
it is sent, the entry with the Redis ``TIME`` of its ingest. The killed / stopped runner is
replaced before the next trial, so every trial sees three runners. The replica TTL is the
runner default (5000 ms) unless ``STREAMWARD_REPLICA_TTL_MS`` is set.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson
import redis
from rich.console import Console
from rich.table import Table

from streamward.lua.keys import Keys
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.loadgen import percentile, round1
from streamward.tools.server import RedisServer

RUNNERS = 3
SIGTERM_TARGET_MS = 300.0
DEFAULT_REPLICA_TTL_MS = 5000
LONG_RUN = {"text": "bench", "chunks": 100_000, "delay_ms": 100}
KEYS = Keys()


@dataclass
class Summary:
    samples: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    target_ms: float
    met: bool
    raced: int = 0
    failed: int = 0
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, ms: list[float], target_ms: float, raced: int = 0, failed: int = 0) -> Summary:
        # nearest rank: with 20 samples, p99 is the slowest one
        p99 = round1(percentile(ms, 0.99))
        return cls(
            samples=len(ms),
            p50_ms=round1(percentile(ms, 0.50)),
            p99_ms=p99,
            max_ms=round1(max(ms, default=None)),
            target_ms=target_ms,
            met=p99 is not None and p99 <= target_ms and failed == 0,
            raced=raced,
            failed=failed,
            samples_ms=[round(x, 1) for x in ms],
        )


class Bench:
    def __init__(self, fleet: Fleet, client: Any, console: Console) -> None:
        self.fleet = fleet
        self.rc = client
        self.console = console
        self.http = httpx.Client(timeout=60)
        self.procs: dict[str, Proc] = {}
        self.stuck: list[str] = []  # logs of runners that did not exit after SIGTERM
        self._n = 0

    def start_runner(self) -> None:
        self._n += 1
        rid = f"bench-r{self._n}"
        self.procs[rid] = self.fleet.start_runner(rid)

    def invoke(self, sid: str, input: Any) -> dict[str, Any]:
        resp = self.http.post(
            f"{self.fleet.api_url}/v1/sessions/{sid}/invoke",
            json={"input": input, "mode": "detached"},
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def cancel(self, sid: str) -> None:
        self.http.post(f"{self.fleet.api_url}/v1/sessions/{sid}/cancel", json={})

    def wait_entry(
        self, sid: str, after: str, run_id: str, etype: str, timeout_s: float
    ) -> tuple[str, dict[str, Any], int] | None:
        """Block on the log for ``etype`` of ``run_id``; (entry id, data, ts ms) or None."""
        key = KEYS.session("default", sid).log
        deadline = time.monotonic() + timeout_s
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            reply = self.rc.xread({key: after}, count=100, block=max(1, min(left_ms, 500)))
            for _, items in reply or []:
                for entry_id, f in items:
                    after = entry_id
                    if f["run_id"] == run_id and f["type"] == etype:
                        return entry_id, orjson.loads(f["data"]), int(f["ts"])
        return None

    def last_id(self, sid: str) -> str:
        tail = self.rc.xrevrange(KEYS.session("default", sid).log, count=1)
        return str(tail[0][0]) if tail else "0-0"

    def owner(self, sid: str, acc: dict[str, Any]) -> str | None:
        """The replica running the accepted invoke; waits for it when the answer was queued."""
        if acc.get("owner"):
            return str(acc["owner"]["replica_id"])
        # 202 queued: the API's start timeout passed first (a loaded machine); the run still
        # starts, and its run.started names the owner
        found = self.wait_entry(sid, "0-0", acc["run_id"], "run.started", 30)
        return None if found is None else str(found[1].get("replica_id"))

    def kill_trial(self, t: int) -> float | None:
        sid = f"kill-{t}"
        acc = self.invoke(sid, LONG_RUN)
        old = self.owner(sid, acc)
        # the 202 says the owner took the input (its start notice), not that the run's
        # run.started is stored yet: the new owner's is the one after the old owner's
        stored = self.wait_entry(sid, "0-0", acc["run_id"], "run.started", 30)
        if old is None or stored is None:
            self.cancel(sid)
            return None
        after = stored[0]
        ttl_s = int(self.fleet.env["STREAMWARD_REPLICA_TTL_MS"]) / 1000
        # trials follow each other at a pace set by the previous expiry; without this the
        # kill would land at the same point of the owner's heartbeat cycle every time
        time.sleep(random.uniform(0, ttl_s / 4))
        t0 = time.time()
        self.procs.pop(old).kill()
        found = self.wait_entry(sid, after, acc["run_id"], "run.started", 3 * ttl_s + 10)
        self.cancel(sid)  # the re-run would go on for hours
        self.start_runner()
        if found is None or found[1].get("replica_id") == old:
            return None
        return found[2] - t0 * 1000

    def sigterm_trial(self, t: int) -> tuple[float | None, bool]:
        sid = f"term-{t}"
        warm = self.invoke(sid, {"text": "warm"})
        old = self.owner(sid, warm)
        if old is None or self.wait_entry(sid, "0-0", warm["run_id"], "run.completed", 10) is None:
            return None, False
        after = self.last_id(sid)
        proc = self.procs.pop(old)
        t0 = time.time()
        proc.signal(signal.SIGTERM)
        acc = self.invoke(sid, {"text": "after sigterm"})
        found = self.wait_entry(sid, after, acc["run_id"], "run.started", 15)
        try:
            proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            # a drain that hangs is a bug worth its own line, not a crashed bench
            self.stuck.append(str(proc.log_path))
            self.console.print(
                f"[red]{old} still running 30 s after SIGTERM[/] (log {proc.log_path})"
            )
            proc.kill()
        self.start_runner()
        if found is None:
            return None, False
        if found[1].get("replica_id") == old:
            return None, True
        return found[2] - t0 * 1000, False


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(res: dict[str, Any], console: Console) -> None:
    t = Table(
        title=f"failover: fault -> new owner's run.started "
        f"(replica TTL {res['replica_ttl_ms']} ms, {res['runners']} runners)"
    )
    for col in ("fault", "trials", "p50 ms", "p99 ms", "max ms", "target p99", "met"):
        t.add_column(col, justify="left" if col == "fault" else "right")
    for name, label in (("kill9", "kill -9"), ("sigterm", "SIGTERM")):
        s = res[name]
        extra = f" ({s['raced']} raced)" if s["raced"] else ""
        extra += f" ({s['failed']} failed)" if s["failed"] else ""
        t.add_row(
            label,
            f"{s['samples']}{extra}",
            _ms(s["p50_ms"]),
            _ms(s["p99_ms"]),
            _ms(s["max_ms"]),
            f"<= {s['target_ms']:.0f} ms",
            "yes" if s["met"] else "NO",
        )
    console.print(t)
    for path in res["sigterm_not_exited"]:
        console.print(f"[red]a runner did not exit within 30 s of SIGTERM[/]: see {path}")


def main(trials: int = 20, output: str = "table") -> int:
    """Run the bench; print a table (or JSON with ``output="json"``); 0 when it ran."""
    if output not in ("table", "json"):
        print(f"unknown output {output!r}: table or json", file=sys.stderr)
        return 2
    if trials < 1:
        print("need trials >= 1", file=sys.stderr)
        return 2
    ttl_ms = int(os.environ.get("STREAMWARD_REPLICA_TTL_MS", DEFAULT_REPLICA_TTL_MS))
    console = Console(stderr=output == "json")
    env = {"STREAMWARD_REPLICA_TTL_MS": str(ttl_ms), "STREAMWARD_LOG_LEVEL": "info"}
    with RedisServer() as server, Fleet(server.url, env=env) as fleet:
        console.print(f"redis {server.url}; starting 1 API and {RUNNERS} runners (echo)...")
        fleet.start_api()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        bench = Bench(fleet, client, console)
        try:
            for _ in range(RUNNERS):
                bench.start_runner()
            kill_ms: list[float] = []
            kill_failed = 0
            for t in range(trials):
                ms = bench.kill_trial(t)
                if ms is None:
                    kill_failed += 1
                else:
                    kill_ms.append(ms)
                console.print(f"kill -9 trial {t + 1}/{trials}: {_fmt(ms)}")
            term_ms: list[float] = []
            raced = term_failed = 0
            for t in range(trials):
                ms, was_raced = bench.sigterm_trial(t)
                if ms is not None:
                    term_ms.append(ms)
                elif was_raced:
                    raced += 1
                else:
                    term_failed += 1
                console.print(f"SIGTERM trial {t + 1}/{trials}: {_fmt(ms, was_raced)}")
            stuck = list(bench.stuck)
        finally:
            bench.http.close()
            client.close()
    sigterm = asdict(Summary.of(term_ms, SIGTERM_TARGET_MS, raced, term_failed))
    sigterm["met"] = sigterm["met"] and not stuck
    res: dict[str, Any] = {
        "replica_ttl_ms": ttl_ms,
        "runners": RUNNERS,
        "trials": trials,
        "kill9": asdict(Summary.of(kill_ms, ttl_ms + 1000.0, failed=kill_failed)),
        "sigterm": sigterm,
        "sigterm_not_exited": stuck,
    }
    if output == "json":
        print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
    else:
        render(res, console)
    return 0


def _fmt(ms: float | None, raced: bool = False) -> str:
    if ms is not None:
        return f"{ms:.1f} ms"
    return "raced (the old owner started it)" if raced else "FAILED (no new owner's run.started)"
