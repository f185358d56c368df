"""``streamward bench all``: the report, its plots and raw results (quick mode, no timing checks).

One real quick run of the cheap bench (heartbeat, a few seconds) feeds every test; failover,
invoke and rollout results are built from their own dataclasses with made-up figures, so the
rendering of every section is checked without starting fleets.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from streamward.tools.bench import archive, failover, invoke, peers, rounds
from streamward.tools.bench.cli import _extra_kwargs, app
from streamward.tools.bench.report import (
    BENCHES,
    FULL_ARGS,
    QUICK_ARGS,
    Options,
    main,
    render,
    rollout_available,
    run_bench,
    selected,
    sized,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER = re.compile(r"^[≤≥]?\s*-?[\d,]+(\.\d+)?")
SECTIONS = (
    "# streamward benchmarks",
    "## Machine",
    "## Summary",
    "## Session lease renewal",
    "### One renewal of all",
    "### Steady-state Redis load",
    "## Replica heartbeat cost vs sessions held",
    "## Memory per lease in Redis",
    "## Failover",
    "## Detached invoke latency",
    "## Ingest throughput",
    "## The fleet first measured: one API and two runners",
    "## The durable record (archiver on)",
    "## Rolling update of the runners",
    "## Reproduce",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bench all --quick --only heartbeat`` into a temp dir, once for the module."""
    out = tmp_path_factory.mktemp("report") / "BENCHMARKS.md"
    assert main(Options(out=out, quick=True, only=["heartbeat"])) == 0
    return out


def _results(quick_run: Path) -> dict[str, Any]:
    """Results of every bench: the real quick heartbeat one, the others from their classes."""
    kill = [4400.0 + 37 * i for i in range(20)]
    term = [9.0 + 1.7 * i for i in range(20)]
    fo = {
        "replica_ttl_ms": 5000,
        "runners": 3,
        "trials": 20,
        "kill9": asdict(failover.Summary.of(kill, 6000.0)),
        "sigterm": asdict(failover.Summary.of(term, failover.SIGTERM_TARGET_MS, raced=1)),
        "sigterm_not_exited": [],
    }
    lat = invoke.Latency.of([0.011 + 0.0001 * i for i in range(100)])
    raw = invoke.Latency.of([0.0015 + 0.00001 * i for i in range(100)])
    res = invoke.Results(
        concurrency=50,
        requests=1000,
        invoke=lat,
        invoke_cold=lat,
        invoke_raw=raw,
        invoke_statuses={"running": 1000},
        ingest_entries_per_s=41_000.0,
        ingest_raw_entries_per_s=50_000.0,
        ingest_entries=200_000,
        p50_met=True,
        p99_met=True,
        ingest_met=True,
        invokes_per_s=570.0,
        runners_answering=1,
    )
    # the peer job queues, one faster and one slower than the made-up streamward
    res.peers = [
        peers.PeerResult(name, f"{name} 1.0", "1.0", 2, 25, w, w, None, per_s)
        for name, w, per_s in (("saq", raw, 2000.0), ("arq", lat, 100.0))
    ]
    res.peers[0].cpu_ms_per_invoke = {"workers": 1.5, "redis": 0.3, "client": 0.4, "total": 2.2}
    res.peers_skipped = {"celery": "celery is not installed"}
    # --rounds 2: a second round in which streamward is faster than in the first
    again = rounds.SystemRound(raw, lat, None, 800.0, {"total": 1.6})
    first = rounds.SystemRound(lat, lat, None, 570.0, {"total": 1.65})
    _, res.peers, res.round_figures = rounds.run(
        2, first, res.peers, lambda n: again, lambda n: [res.peers[0]]
    )
    res.rounds = 2
    res.versus_best_peer = peers.compare(lat, lat, 570.0, res.peers)
    rounds.tally(res.versus_best_peer, res.round_figures)
    inv = asdict(res) | {
        "invoke_ratio_p50": res.invoke_ratio_p50,
        "ingest_ratio": res.ingest_ratio,
        "targets": {"p50_ms": 15.0, "p99_ms": 60.0, "ingest_entries_per_s": 30_000.0},
        # optional figures of newer invoke benches
        "invoke_single": asdict(raw),
        "invokes_per_s": 570.0,
        "cpu_ms_per_invoke": {"api": 0.95, "runners": 0.5, "redis": 0.2, "total": 1.65},
        "cores": 2,
        "closed_loop_floor_ms": 41.3,
    }
    # the race with two runners: slower against the same peers, both runners answering
    slow = invoke.Latency.of([0.013 + 0.0001 * i for i in range(100)])
    fl = invoke.Results(**{**res.__dict__, "peers": [], "round_figures": []})
    fl.invoke, fl.invokes_per_s, fl.runners, fl.runners_answering = slow, 480.0, 2, 2
    fl.cpu_ms_per_invoke = {"api": 0.97, "runners": 0.6, "redis": 0.2, "total": 1.77}
    fl.rounds, fl.peers = (
        3,
        [peers.PeerResult("saq", "saq 1.0", "1.0", 2, 25, lat, lat, None, 500.0)],
    )
    fl.versus_best_peer = peers.compare(slow, lat, 480.0, fl.peers)
    fleet_json = asdict(fl)
    # the same bench with the record on: slower, with the archiver's and PostgreSQL's CPU
    arc = invoke.Results(**{**res.__dict__, "peers": [], "peers_skipped": {}})
    arc.invoke = invoke.Latency.of([0.012 + 0.0001 * i for i in range(100)])
    arc.archive = archive.ArchiveFigures(
        lag_p50_s=0.0, lag_p99_s=0.66, lag_max_s=1.2, samples=120, entries_archived=4000,
        catch_up_s=1.5, entries_per_s=300.0, drain_sessions=50, drain_entries=10_000,
        drain_s=4.0, drain_entries_per_s=2500.0,
    )  # fmt: skip
    arc_json = asdict(arc) | {
        "invokes_per_s": 491.0,
        "cpu_ms_per_invoke": {"api": 1.23, "runners": 0.71, "redis": 0.24, "archiver": 0.22,
                              "postgres": 0.08, "total": 2.48},
    }  # fmt: skip
    phase = {"seconds": 3.0, "invokes": 60, "acked": 60, "unacked": 0, "max_ms": 90.0}
    check = {"ok": True, "violations": {}, "stats": {"sessions": 32, "invokes": 145}}
    ro = {
        "runners": 2,
        "apis": 2,
        "sessions": 32,
        "rate_per_s": 20.0,
        "phases": {
            name: phase | {"name": name, "p50_ms": 20.0, "p99_ms": p99}
            for name, p99 in (("steady", 40.0), ("rollout", 55.0), ("after", 41.0))
        },
        "added_p99_ms": 15.0,
        "added_max_ms": 0.0,
        "swaps": [
            {
                "old": "old-1",
                "new": "new-1",
                "new_ready_s": 0.5,
                "sigterm_ns": 1,
                "exit_code": 0,
                "drain_s": 0.7,
                "runs_in_flight": 7,
                "released_in_drain": 17,
                "drained_runs": 7,
                "started_after_sigterm": 0,
            },
        ],
        "old_left": [],
        "new_alive": ["new-1", "new-2"],
        "handed_over": 22,
        "ok": True,
        "exactly_once": check,
        "history": check | {"ok": False, "violations": {"lost": ["s1"]}},
    }
    machine = orjson.loads((quick_run.parent / "bench" / "results.json").read_bytes())
    benches: dict[str, Any] = {
        "heartbeat": machine["benches"]["heartbeat"],
        "failover": {"command": "streamward bench failover --trials 20", "result": fo},
        "invoke": {"command": "streamward bench invoke", "result": inv},
        "fleet": {"command": "streamward bench invoke --runners 2", "result": fleet_json},
        "archive": {"command": "streamward bench invoke --archiver", "result": arc_json},
        "rollout": {"command": "streamward bench rollout", "exit_status": 1, "result": ro},
    }
    out: dict[str, Any] = machine | {"quick": False, "note": "shared 2-core test machine"}
    return out | {"benches": benches}


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


def _summary_rows(md: str) -> list[list[str]]:
    section = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_quick_run_writes_report_plot_and_results(quick_run: Path) -> None:
    md = quick_run.read_text()
    for section in SECTIONS[:8]:
        assert section in md, section
    assert "quick smoke run" in md
    assert "Not run this time: failover, invoke, fleet, archive, rollout." in md
    raw = orjson.loads((quick_run.parent / "bench" / "results.json").read_bytes())
    assert raw["quick"] is True and set(raw["benches"]) == {"heartbeat"}
    hb = raw["benches"]["heartbeat"]
    assert hb["exit_status"] == 0 and hb["command"].startswith("streamward bench heartbeat")
    assert hb["result"]["leases"] == 2000
    for key in ("cpu_model", "logical_cpus", "ram_gib", "kernel", "python", "redis_server"):
        assert raw["machine"][key], key
    assert raw["machine"]["redis_server"]["version"] != "?"
    _check_png(quick_run.parent / "bench" / "heartbeat.png")
    assert "](bench/heartbeat.png)" in md


def test_every_section_renders_with_numbers(quick_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(_results(quick_run)))
    out = tmp_path / "docs" / "BENCHMARKS.md"
    assert main(Options(out=out, from_results=src)) == 0
    md = out.read_text()
    for section in SECTIONS:
        assert section in md, section
    assert "> **Measuring conditions.** shared 2-core test machine" in md
    rows = _summary_rows(md)
    assert len(rows) >= 12
    for figure, value, _baseline, ratio, target, met in rows:
        assert met in ("met", "**NOT met**", "-"), figure
        if value:
            assert NUMBER.match(value), (figure, value)
        if ratio:
            assert re.fullmatch(r"[\d,]+(\.\d+)?x", ratio), (figure, ratio)
            float(ratio[:-1].replace(",", ""))
        if met != "-":
            assert target, f"{figure}: met/NOT met without a target"
    # the made-up history violation is reported as such, not hidden
    assert any("history" in r[0] and r[5] == "**NOT met**" for r in rows)
    assert "(exit status 1;" in md
    assert "one caller alone p50 (no queueing)" in md and "closed-loop floor" in md
    assert "### Against the Redis job queues" in md and "| **streamward detached invoke** |" in md
    # CPU per round trip beside each system's figures ("-" for a peer measured without it)
    assert "| CPU ms / round trip |" in md and "| 2.20 |" in md and "| - |" in md
    assert "peer celery skipped: celery is not installed" in md
    # --rounds: the figures are medians, and each round has its row
    assert "Medians of 2 rounds" in md and "| 2 | peers first |" in md
    assert any("median of 2 rounds (met in " in r[0] for r in rows)
    assert any(r[0].startswith("detached invoke p50 vs the best Redis job queue") for r in rows)
    assert any("(saq 1.0)" in r[2] and r[5] == "**NOT met**" for r in rows)
    for name in ("heartbeat.png", "failover.png", "invoke_peers.png"):
        _check_png(tmp_path / "docs" / "bench" / name)
        assert f"](bench/{name})" in md
    assert orjson.loads((tmp_path / "docs" / "bench" / "results.json").read_bytes())["benches"]


def test_the_archive_section_sets_the_record_beside_the_invoke_bench(
    quick_run: Path,
) -> None:
    results = _results(quick_run)
    md = render(results, {})
    rows = {r[0]: r for r in _summary_rows(md)}
    lag = rows["archive lag p99 under the invoke load, concurrency 50"]
    assert lag[1:] == ["0.66 s", "", "", "≤ 5 s", "met"]
    drain = rows["archive throughput: a backlog of 10,000 ~1 KB entries"]
    assert drain[1] == "2,500 entries/s"
    versus = rows["warm invokes/s with the archiver on vs the invoke bench (record off)"]
    assert versus[1:4] == ["491 /s", "570 /s (record off)", "0.86x"]
    section = md.split("## The durable record (archiver on)", 1)[1].split("\n## ", 1)[0]
    assert "| warm invokes/s | 570 | 491 | 0.86x |" in section
    assert "| CPU ms per invoke: archiver | - | 0.22 | - |" in section
    assert "| CPU ms per invoke: api | 0.95 | 1.23 | 1.29x |" in section
    assert "0.00 / 0.66 / 1.20 s | p99 ≤ 5 s | met |" in section
    assert "| 2,500 entries/s |" in section and "drained in 4.0 s" in section
    # a lag over the target is reported as such
    results["benches"]["archive"]["result"]["archive"]["lag_p99_s"] = 7.5
    assert "| 7.50 s |  |  | ≤ 5 s | **NOT met** |" in render(results, {})
    # results from before the archive bench render without its section
    del results["benches"]["archive"]
    assert "durable record" not in render(results, {})


def test_the_fleet_section_sets_two_runners_beside_the_race_above(quick_run: Path) -> None:
    results = _results(quick_run)
    md = render(results, {})
    # the race above: one runner, its fleet named as such
    assert "one API and one runner, echo handler (two server processes, as each peer has two)" in md
    rows = {r[0]: r for r in _summary_rows(md)}
    per_s = rows["detached invoke started/s, 1 API + 2 runners, vs saq (same run)"]
    assert per_s[1:] == ["480 /s", "500 /s (saq)", "0.96x", "", "-"]
    p50 = rows["detached invoke warm p50, 1 API + 2 runners, vs saq (same run)"]
    assert p50[1:4] == ["17.90 ms", "15.90 ms (saq)", "1.13x"]
    section = md.split("## The fleet first measured", 1)[1].split("\n## ", 1)[0]
    assert "`streamward bench invoke --runners 2`" in section and "saq only" in section
    # each fleet against its own run's best peer: saq's started/s is 2,000 in the race above
    assert "| 1 API + 1 runner (the race above) | 2: saq, arq | 15.90 | " in section
    assert "| 570 | 1.65 | 4.50x (saq) | 0.34x (saq) | 1 |" in section
    assert "| 1 API + 2 runners (this race) | 3: saq | 17.90 | " in section
    assert "| 480 | 1.77 | 1.13x (saq) | 0.96x (saq) | 2 |" in section
    # the main race's summary rows name its fleet too
    assert any(
        figure.startswith("started/s vs the best Redis job queue, 1 API + 1 runner, concurrency")
        for figure in rows
    )
    # results from before this bench (and before --runners: two runners) render as they did
    del results["benches"]["fleet"]
    del results["benches"]["invoke"]["result"]["runners"]
    md = render(results, {})
    assert "## The fleet first measured" not in md and "(this race)" not in md
    assert "`streamward bench invoke`: one API and 2 runners, echo handler. 50 callers" in md
    assert any(r[0].startswith("started/s vs the best Redis job queue, concurrency 50")
               for r in _summary_rows(md))  # fmt: skip


def test_bench_all_runs_the_archive_bench_small(tmp_path: Path) -> None:
    """A real small run: `bench all --only archive` with tiny sizes (PostgreSQL, a fleet,
    an archiver, 40 invokes and a 400-entry backlog) renders the section with its figures."""
    out = tmp_path / "BENCHMARKS.md"
    small = ["--archiver", "--peers", "none", "--concurrency", "2", "--requests", "40"]
    assert main(Options(out=out, only=["archive"], overrides={"archive": small})) == 0
    md = out.read_text()
    assert "## The durable record (archiver on)" in md
    assert "`streamward bench invoke --archiver --peers none --concurrency 2" in md
    got = orjson.loads((tmp_path / "bench" / "results.json").read_bytes())
    a = got["benches"]["archive"]["result"]["archive"]
    assert a["drain_entries"] == 2 * archive.DRAIN_PER_SESSION and a["drain_entries_per_s"] > 0
    assert a["entries_archived"] > 0 and a["samples"] > 0
    assert "archiver" in got["benches"]["archive"]["result"]["cpu_ms_per_invoke"]


def test_report_without_matplotlib(
    quick_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "BENCHMARKS.md"
    src = quick_run.parent / "bench" / "results.json"
    assert main(Options(out=out, from_results=src)) == 0
    assert "pip install 'streamward[bench]'" in capsys.readouterr().err
    md = out.read_text()
    assert "## Session lease renewal" in md and ".png)" not in md
    assert not list((tmp_path / "bench").glob("*.png"))


def test_failed_bench_is_reported(quick_run: Path, tmp_path: Path) -> None:
    results = _results(quick_run)
    results["benches"]["invoke"] = {"command": "streamward bench invoke", "error": "exit status 1"}
    md = render(results, {})
    assert "**bench invoke failed** (`streamward bench invoke`): exit status 1" in md
    assert "## Detached invoke latency" not in md
    bad = run_bench("no-such-bench", [])
    assert "error" in bad and "result" not in bad


def test_cli_all_from_results(quick_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "B.md"
    src = quick_run.parent / "bench" / "results.json"
    args = [
        "all",
        "--from-results",
        str(src),
        "--out",
        str(out),
        "--plots-dir",
        str(tmp_path / "p"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "## Summary" in out.read_text()
    assert (tmp_path / "p" / "results.json").exists()
    assert "](../p/heartbeat.png)" in out.read_text()
    assert CliRunner().invoke(app, ["all", "--only", "nope"]).exit_code == 2


def test_sizes_apply_to_every_invoke_race() -> None:
    got = sized(FULL_ARGS, 7, None)
    assert set(got) == {"invoke", "fleet", "archive"}
    for name, args in got.items():
        assert args[args.index("--concurrency") + 1] == "7", name
        assert args[args.index("--requests") + 1] == "5000", name  # untouched
    assert "--archiver" in got["archive"] and got["fleet"][:2] == ["--runners", "2"]
    assert FULL_ARGS["invoke"][FULL_ARGS["invoke"].index("--concurrency") + 1] == "50"
    assert sized(QUICK_ARGS, None, 99)["fleet"][-2:] == ["--requests", "99"]
    assert sized(FULL_ARGS, None, None) == {}


def test_selection() -> None:
    with_rollout = ["heartbeat", "failover", "invoke", "fleet", "archive", "rollout"]
    assert selected(Options()) == with_rollout
    assert selected(Options(quick=True)) == with_rollout[:-1]
    assert selected(Options(quick=True, rollout=True)) == with_rollout
    assert selected(Options(rollout=False)) == with_rollout[:-1]
    assert selected(Options(only=["invoke", "heartbeat", "invoke"])) == ["invoke", "heartbeat"]
    assert selected(Options(only=["rollout"], rollout=False)) == []
    assert set(BENCHES) == set(with_rollout)
    assert isinstance(rollout_available(), bool)


def test_rollout_extra_options() -> None:
    def target(
        runners: int = 4,
        before_s: float = 8.0,
        seed: int = 0,
        name: str = "x",
        audit: bool = True,
        limit: int | None = None,
        output: str = "table",
    ) -> int:
        return 0

    args = ["--before-s", "2.5", "--seed=3", "--name", "y", "--no-audit", "--limit", "7"]
    got = _extra_kwargs(target, args)
    assert got == {"before_s": 2.5, "seed": 3, "name": "y", "audit": False, "limit": 7}
    assert _extra_kwargs(target, ["--audit"]) == {"audit": True}
    for bad in (["--nope", "1"], ["--seed"], ["--seed", "x"], ["stray"]):
        with pytest.raises(Exception, match=r"nope|needs a value|seed|unexpected"):
            _extra_kwargs(target, bad)
