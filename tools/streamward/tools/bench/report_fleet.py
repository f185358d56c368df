"""The invoke race with the fleet issue 17 first measured, in docs/BENCHMARKS.md:
``streamward bench invoke --runners 2`` (one API and two runners) against saq, beside the
main race (one API and one runner: two server processes, as each peer has two workers).

Both fleets run the same code; the second shows what a third process on the same two cores
costs. Every function reads the benches' JSON and returns nothing to add without a fleet
result (results from before this bench render as they did).
"""

from __future__ import annotations

from typing import Any

from streamward.tools.bench.report_peers import fleet_words, unit

# the bench name ``bench all`` gives it, and what it runs (bench/report.py); saq only: the
# best peer of every race so far, and the other peers would double the bench's time
COMMAND = "invoke"
FULL_ARGS = ["--runners", "2", "--peers", "saq", "--concurrency", "50", "--requests", "5000",
             "--rounds", "3"]  # fmt: skip
QUICK_ARGS = ["--runners", "2", "--peers", "none", "--concurrency", "10", "--requests", "200"]
TITLE = "## The fleet first measured: one API and two runners"


def _ratio(versus: dict[str, Any], key: str) -> str:
    v = versus.get(key)
    return f"{v['ratio']:.2f}x ({v['peer']})" if v else "-"


def summary_rows(fleet: dict[str, Any]) -> list[list[str]]:
    """Rows of the report's summary table (figure, streamward, baseline, ratio, target, met):
    informative, the targets are the main race's."""
    versus = fleet.get("versus_best_peer") or {}
    rows = []
    for key, what in (("started_per_s", "started/s"), ("warm_p50", "warm p50")):
        v = versus.get(key)
        if not v:
            continue
        rows.append(
            [
                f"detached invoke {what}, {fleet_words(fleet)}, vs {v['peer']} (same run)",
                unit(key, v["streamward"]),
                f"{unit(key, v['peer_value'])} ({v['peer']})",
                f"{v['ratio']:.2f}x",
                "",
                "-",
            ]
        )
    return rows


def section(fleet: dict[str, Any], bench: dict[str, Any], inv: dict[str, Any] | None) -> list[str]:
    """The report's section: markdown blocks (the report's ``_Doc.add`` takes them)."""
    if not fleet.get("invoke"):
        return []
    header = (
        "| fleet | rounds, peers | warm p50 ms | warm p99 ms | started/s | CPU ms / round trip "
        "| p50 ÷ best peer | started/s ÷ best peer | runners that answered (round 1) |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    body = ""
    for res, where in ((inv, "the race above"), (fleet, "this race")):
        if not res or not res.get("invoke"):
            continue
        versus = res.get("versus_best_peer") or {}
        cpu = (res.get("cpu_ms_per_invoke") or {}).get("total")
        peers = ", ".join(p["name"] for p in res.get("peers") or []) or "none"
        body += (
            f"| {fleet_words(res)} ({where}) | {res.get('rounds', 1)}: {peers} | "
            f"{res['invoke']['p50_ms']:.2f} | "
            f"{res['invoke']['p99_ms']:.2f} | {res.get('invokes_per_s', 0):,.0f} | "
            f"{f'{cpu:.2f}' if cpu is not None else '-'} | {_ratio(versus, 'warm_p50')} | "
            f"{_ratio(versus, 'started_per_s')} | {res.get('runners_answering') or '-'} |\n"
        )
    return [
        TITLE,
        f"`{bench['command']}`: the race above with a second runner process, the fleet the "
        "race was first measured with (issue 17). The race above gives streamward two server "
        "processes, its API and one runner, as each peer has its two workers; here a third "
        "process shares the same 2 cores (why that costs: [performance.md](performance.md), "
        "\"Seventh round\"). Each fleet against its own race's best peer, over that race's "
        "rounds and peers (this race: saq only, the best peer of every race so far):",
        header + body,
    ]
