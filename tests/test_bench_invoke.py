"""``streamward bench invoke`` end to end at a small size: real API, runners and Redis, and
the peer job queues (saq, arq, Celery) on their own real redis-servers and worker processes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from streamward.tools.bench import peers


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
            *("--rounds", "2"),
            *("-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    res = json.loads(out.stdout)
    # every warm invoke was answered as started (the runner ran them), none queued
    assert res["invoke_statuses"] == {"running": 40}  # after the 4 cold ones
    # one runner beside the API by default: two server processes, as each peer has
    assert res["runners"] == 1 and res["runners_answering"] == 1
    assert res["invoke"]["p50_ms"] > 0 and res["invoke"]["p99_ms"] >= res["invoke"]["p50_ms"]
    assert res["invoke_raw"]["p50_ms"] > 0 and res["invoke_ratio_p50"] > 0
    assert res["ingest_entries_per_s"] > 0 and res["ingest_ratio"] > 0
    cpu = res["cpu_ms_per_invoke"]
    assert cpu["total"] > 0 and cpu["api"] > 0 and cpu["runners"] > 0
    # every installed peer ran the handshake (the dev extra installs them all; arq comes
    # from the Makefile, so a bare `pip install -e .[dev]` reports it skipped instead)
    installed = {p.name for p in peers.PEERS if importlib.util.find_spec(p.module) is not None}
    assert installed >= {"saq", "celery"}
    assert res["peers_failed"] == {}
    assert {p["name"] for p in res["peers"]} == installed
    assert set(res["peers_skipped"]) == set(peers.NAMES) - installed
    for p in res["peers"]:  # medians of the 2 rounds: the samples of both
        assert p["workers"] == 2 and p["version"]
        assert p["warm"]["samples"] == 2 * (40 - 4) and p["cold"]["samples"] == 2 * 4
        assert p["burst"]["samples"] == 2 * 4 and p["started_per_s"] > 0
        assert set(p["ratios"]) == {"warm_p50", "warm_p99", "cold_p50", "cold_p99", "started_per_s"}
    versus = res["versus_best_peer"]
    assert set(versus) == {
        "warm_p50",
        "warm_p99",
        "started_per_s",
        "cold_p50",
        "cold_over_warm_p50",
    }
    assert versus["warm_p50"]["peer"] in installed and versus["warm_p50"]["ratio"] > 0
    # --rounds 2: streamward's figures are medians too, and each round is kept
    assert res["rounds"] == 2 and res["invoke"]["samples"] == 2 * (40 - 4)
    figures = res["round_figures"]
    assert [f["order"] for f in figures] == ["streamward first", "peers first"]
    for f in figures:
        assert set(f["peers"]) == installed and f["streamward"]["started_per_s"] > 0
        assert f["streamward"]["cpu_ms_per_trip"] > 0
    assert len(versus["started_per_s"]["per_round"]) == versus["started_per_s"]["rounds"] == 2


def test_bench_invoke_with_the_archiver_reports_archive_lag_rate_and_cpu() -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "streamward.tools", "bench", "invoke"),
            *("--concurrency", "4", "--requests", "40", "--peers", "none"),
            *("--archiver", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    res = json.loads(out.stdout)
    assert res["invoke_statuses"] == {"running": 40}
    a = res["archive"]
    assert a["samples"] > 0 and 0 <= a["lag_p50_s"] <= a["lag_p99_s"] <= a["lag_max_s"]
    # every invoked run's entries reached the record (run.started, outputs, terminal)
    assert a["entries_archived"] >= 3 * (40 + 4) and a["entries_per_s"] > 0
    # the record's processes are counted beside the rest (at this size their CPU may round
    # to 0 clock ticks, so only their presence is checked)
    assert {"archiver", "postgres"} <= set(res["cpu_ms_per_invoke"])


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamward.tools", "bench", "invoke", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bench_invoke_runners_sets_the_fleet_and_both_runners_answer() -> None:
    out = _bench("--runners", "2", "--peers", "none", "--concurrency", "12", "--requests",
                 "120", "-o", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["runners"] == 2 and res["invoke_statuses"] == {"running": 120}
    # twelve new sessions at once: Redis hands each new work entry to a runner blocked in
    # its work read, so both runners claim some and both answer invokes
    assert res["runners_answering"] == 2


def test_bench_invoke_refuses_a_fleet_without_a_runner_before_anything_starts() -> None:
    for n in ("0", "9"):
        out = _bench("--runners", n, "--peers", "none")
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip() == "need 1 <= --runners <= 8"
