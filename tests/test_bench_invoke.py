"""``streamward bench invoke`` end to end at a small size: real API, runners and Redis."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_invoke_runs_and_reports_every_figure() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamward.tools",
            "bench",
            "invoke",
            *("--concurrency", "4"),
            *("--requests", "40"),
            *("-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    res = json.loads(out.stdout)
    # every warm invoke was answered as started (the runners ran them), none queued
    assert res["invoke_statuses"] == {"running": 40}  # after the 4 cold ones
    assert res["invoke"]["p50_ms"] > 0 and res["invoke"]["p99_ms"] >= res["invoke"]["p50_ms"]
    assert res["invoke_raw"]["p50_ms"] > 0 and res["invoke_ratio_p50"] > 0
    assert res["ingest_entries_per_s"] > 0 and res["ingest_ratio"] > 0
    cpu = res["cpu_ms_per_invoke"]
    assert cpu["total"] > 0 and cpu["api"] > 0 and cpu["runners"] > 0
