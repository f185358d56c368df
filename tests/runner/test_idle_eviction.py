"""Idle sessions do not block new work: two runner processes with MAX_SESSIONS 20 and a 60 s
close_delay finish 400 one-shot sessions long before close_delay alone would let them, and
never evict a session that is running or has input waiting (real Redis, API, runners)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from streamward.tools.fleet import Fleet
from tests.runner.helpers import KEYS, LogItem, assert_seqs, transcript, wait_until

MAX_SESSIONS = 20
CLOSE_DELAY_S = 60
N = 400
TERMINAL = ("run.completed", "run.failed", "run.cancelled")
# without eviction each runner frees its MAX_SESSIONS slots only every close_delay:
# N / (2 * MAX_SESSIONS) * CLOSE_DELAY_S = 600 s; this bound is a fifth of that
DONE_WITHIN_S = N / (2 * MAX_SESSIONS) * CLOSE_DELAY_S / 5
SLOW = {"text": "slow", "chunks": 30, "delay_ms": 100}  # ~3 s: running through the burst


async def _invoke_all(api_url: str, inputs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(25)
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:

        async def one(sid: str, payload: Any) -> dict[str, Any]:
            async with sem:
                r = await client.post(
                    f"/v1/sessions/{sid}/invoke", json={"input": payload, "mode": "detached"}
                )
                assert r.status_code == 202, r.text
                body: dict[str, Any] = r.json()
                return body

        return await asyncio.gather(*[one(sid, p) for sid, p in inputs])


def _lifecycle(entries: list[LogItem]) -> list[str]:
    return [e.type for e in entries if e.type != "run.output"]


def _ended(rc: Any, sids: list[str]) -> int:
    """How many of ``sids`` have a terminal entry last in their transcript."""
    pipe = rc.pipeline(transaction=False)
    for sid in sids:
        pipe.xrevrange(KEYS.session("default", sid).log, count=1)
    return sum(1 for last in pipe.execute() if last and last[0][1].get("type") in TERMINAL)


def test_idle_sessions_give_way_to_a_burst_of_one_shot_sessions(fleet: Fleet, rc: Any) -> None:
    fleet.env.update(
        {
            "STREAMWARD_REPLICA_TTL_MS": "2000",
            "STREAMWARD_MAX_SESSIONS": str(MAX_SESSIONS),
            "STREAMWARD_CLOSE_DELAY_S": str(CLOSE_DELAY_S),
            "STREAMWARD_LOG_LEVEL": "info",
        }
    )
    fleet.start_api()
    procs = [fleet.start_runner(r) for r in ("r1", "r2")]
    # busy through the burst: a running run, and a second input queued behind it
    busy = [f"busy{i}" for i in range(4)]
    asyncio.run(_invoke_all(fleet.api_url, [(s, SLOW) for s in busy]))
    asyncio.run(_invoke_all(fleet.api_url, [(s, {"text": "queued"}) for s in busy]))
    one_shot = [f"s{i:03d}" for i in range(N)]
    t0 = time.monotonic()
    accepted = asyncio.run(_invoke_all(fleet.api_url, [(s, {"text": s}) for s in one_shot]))
    assert len({a["run_id"] for a in accepted}) == N

    everything = busy + one_shot
    wait_until(lambda: _ended(rc, everything) == len(everything), DONE_WITHIN_S, "all runs end")
    elapsed = time.monotonic() - t0
    evictions = sum(p.log().count("longest idle, passivated") for p in procs)
    assert evictions >= N - 2 * MAX_SESSIONS  # every later session needed a slot freed

    for sid in one_shot:
        entries = transcript(rc, sid)
        assert_seqs(entries)
        assert _lifecycle(entries) == ["run.started", "run.completed"], (sid, entries)
        assert entries[0].data["attempt"] == 1
    for sid in busy:  # never evicted mid-run or with input waiting: one owner, no restart
        entries = transcript(rc, sid)
        assert_seqs(entries)
        assert _lifecycle(entries) == ["run.started", "run.completed"] * 2, entries
        assert all(e.data.get("attempt", 1) == 1 for e in entries if e.type == "run.started")
        assert len({e.token for e in entries}) == 1, entries
    print(f"{N} one-shot sessions on 2 runners (max {MAX_SESSIONS}): {elapsed:.1f} s")
