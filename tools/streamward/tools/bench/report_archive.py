"""The durable record in docs/BENCHMARKS.md: ``streamward bench invoke --archiver`` (an
embedded PostgreSQL and one archiver beside the invoke bench's fleet) against the plain
invoke bench of the same run: the regression check, the archive lag and its throughput.

Every function reads the benches' JSON and returns nothing to add without an archive
result (results from before the archive bench render as they did).
"""

from __future__ import annotations

import math
from typing import Any

# docs/record.md: the archive lag's p99 under the invoke bench's load stays within this
TARGET_LAG_P99_S = 5.0
# the bench name ``bench all`` gives it, and what it runs (bench/report.py)
COMMAND = "invoke"
FULL_ARGS = ["--archiver", "--peers", "none", "--concurrency", "50", "--requests", "5000"]
QUICK_ARGS = ["--archiver", "--peers", "none", "--concurrency", "10", "--requests", "200"]
CPU_PARTS = ("api", "runners", "redis", "archiver", "postgres", "total")


def _ratio(on: float | None, off: float | None) -> str:
    if not on or not off or not math.isfinite(on / off):
        return ""
    v = on / off
    return f"{v:,.1f}x" if v >= 10 else f"{v:.2f}x"


def _met(lag_p99_s: float) -> str:
    return "met" if lag_p99_s <= TARGET_LAG_P99_S else "**NOT met**"


def summary_rows(arc: dict[str, Any], inv: dict[str, Any] | None) -> list[list[str]]:
    """Rows of the report's summary table (figure, streamward, baseline, ratio, target, met)."""
    a = arc.get("archive")
    if not a:
        return []
    off = (inv or {}).get("invokes_per_s")
    rows = [
        [
            f"archive lag p99 under the invoke load, concurrency {arc['concurrency']}",
            f"{a['lag_p99_s']:.2f} s",
            "",
            "",
            f"≤ {TARGET_LAG_P99_S:g} s",
            _met(a["lag_p99_s"]),
        ],
        [
            f"archive throughput: a backlog of {a.get('drain_entries', 0):,} ~1 KB entries",
            f"{a.get('drain_entries_per_s', 0):,.0f} entries/s",
            "",
            "",
            "",
            "-",
        ],
        [
            "warm invokes/s with the archiver on vs the invoke bench (record off)",
            f"{arc.get('invokes_per_s', 0):,.0f} /s",
            f"{off:,.0f} /s (record off)" if off else "",
            _ratio(arc.get("invokes_per_s"), off),
            "",
            "-",
        ],
    ]
    return rows


def section(arc: dict[str, Any], bench: dict[str, Any], inv: dict[str, Any] | None) -> list[str]:
    """The report's section: markdown blocks (the report's ``_Doc.add`` takes them)."""
    a = arc.get("archive")
    if not a:
        return []
    inv = inv or {}
    header = "| figure | record off (invoke bench) | record on | ratio |\n|---|--:|--:|--:|\n"
    rows: list[tuple[str, float | None, float | None, str]] = []
    for q in ("p50", "p99"):
        key = f"{q}_ms"
        rows.append((f"{q} round trip (ms)", inv.get("invoke", {}).get(key),
                     arc["invoke"][key], "{:.2f}"))  # fmt: skip
    rows.append(("warm invokes/s", inv.get("invokes_per_s"), arc.get("invokes_per_s"), "{:,.0f}"))
    cpu_on, cpu_off = arc.get("cpu_ms_per_invoke") or {}, inv.get("cpu_ms_per_invoke") or {}
    for part in CPU_PARTS:
        if part in cpu_on:
            rows.append((f"CPU ms per invoke: {part}", cpu_off.get(part), cpu_on[part], "{:.2f}"))
    table = header + "".join(
        f"| {name} | {fmt.format(off) if off is not None else '-'} | "
        f"{fmt.format(on) if on is not None else '-'} | {_ratio(on, off) or '-'} |\n"
        for name, off, on, fmt in rows
    )
    figures = (
        "| archive figure | value | target | met |\n|---|--:|--:|---|\n"
        f"| lag p50 / p99 / max (sampled every 100 ms, {a['samples']:,} samples) | "
        f"{a['lag_p50_s']:.2f} / {a['lag_p99_s']:.2f} / {a['lag_max_s']:.2f} s | "
        f"p99 ≤ {TARGET_LAG_P99_S:g} s | {_met(a['lag_p99_s'])} |\n"
        f"| archived under the invoke load (the run and its catch-up, {a['catch_up_s']:.1f} s) | "
        f"{a['entries_per_s']:,.0f} entries/s ({a['entries_archived']:,}) |  | - |\n"
        f"| throughput: a backlog of {a.get('drain_entries', 0):,} ~1 KB entries over "
        f"{a.get('drain_sessions', 0)} sessions, drained in {a.get('drain_s', 0):.1f} s | "
        f"{a.get('drain_entries_per_s', 0):,.0f} entries/s |  | - |\n"
    )
    return [
        "## The durable record (archiver on)",
        f"`{bench['command']}`: the invoke bench's fleet with the record on: an embedded "
        "PostgreSQL and one `streamward archiver` process beside the API and the runners, "
        "all on this machine, so the archiver and PostgreSQL take a share of the same cores "
        "(in production they run in their own pods); it skips the admin ingest phases (their "
        "sessions are never invoked, so never archived). Record off: the invoke bench above, "
        "same run. The lag is the longest-due session's wait in the archiver's work set "
        "(`streamward_archive_lag_seconds`). Throughput: with the archiver stopped "
        "(SIGSTOP), that many entries are written to Redis, then the time from SIGCONT until "
        "PostgreSQL holds them all ([record.md](record.md#measured)).",
        table,
        figures,
    ]
