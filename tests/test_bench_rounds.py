"""``streamward bench invoke --rounds N`` (bench/rounds.py): the alternating order, the
medians compared and each round's own ratios; the rounds run end to end in
tests/test_bench_invoke.py."""

from __future__ import annotations

import statistics

import pytest

from streamward.tools.bench import peers, rounds
from streamward.tools.bench.invoke import Latency, main


def _lat(p50_ms: float, p99_ms: float) -> Latency:
    return Latency.of([p50_ms / 1000] * 98 + [p99_ms / 1000] * 2)


def _ours(p50: float, per_s: float, cpu: float = 2.0) -> rounds.SystemRound:
    warm, cold = _lat(p50, p50 * 2), _lat(p50 * 1.5, p50 * 3)
    return rounds.SystemRound(warm, cold, None, per_s, {"total": cpu})


def _peer(name: str, p50: float, per_s: float, cpu: float = 2.5) -> peers.PeerResult:
    p = peers.PeerResult(name, name, "1.0", 2, 1, _lat(p50, p50 * 2), _lat(p50, p50), None, per_s)
    p.cpu_ms_per_invoke = {"workers": cpu - 1, "total": cpu}
    return p


def test_rounds_alternate_and_compare_each_systems_median() -> None:
    calls: list[str] = []
    # streamward 1,000 / 700 / 1,300 invokes/s; saq 1,100 / 900 / 1,000 /s
    ours = {2: _ours(30, 700), 3: _ours(20, 1300)}
    theirs = {2: [_peer("saq", 22, 900)], 3: [_peer("saq", 25, 1000)]}

    def measure_streamward(n: int) -> rounds.SystemRound:
        calls.append(f"streamward {n}")
        return ours[n]

    def measure_peers(n: int) -> list[peers.PeerResult]:
        calls.append(f"peers {n}")
        return theirs[n]

    mine, their_medians, figures = rounds.run(
        3, _ours(25, 1000), [_peer("saq", 20, 1100)], measure_streamward, measure_peers
    )
    # round 1 is the caller's (streamward first); then peers first, then streamward first
    assert calls == ["peers 2", "streamward 2", "streamward 3", "peers 3"]
    assert [f["order"] for f in figures] == ["streamward first", "peers first", "streamward first"]
    assert mine.started_per_s == 1000 and mine.warm.p50_ms == 25
    assert mine.warm.samples == 300  # the rounds' samples together
    [saq] = their_medians
    assert saq.started_per_s == 1000 and saq.warm.p50_ms == 22 and saq.ratios == {}
    assert saq.cpu_ms_per_invoke == {"workers": 1.5, "total": 2.5}
    # each round against its own peers: 1000/1100, 700/900, 1300/1000
    per_round = [f["versus_best_peer"]["started_per_s"]["ratio"] for f in figures]
    assert per_round == [round(1000 / 1100, 3), round(700 / 900, 3), 1.3]
    versus = peers.compare(mine.warm, mine.cold, mine.started_per_s, their_medians)
    assert versus["started_per_s"]["ratio"] == 1.0 and versus["started_per_s"]["met"] is True
    rounds.tally(versus, figures)
    # judged by the median of the rounds' own ratios (paired, minutes apart), not by the
    # ratio of the medians (1,000 / 1,000 here), which pairs different rounds
    started = versus["started_per_s"]
    assert started["ratio"] == round(1000 / 1100, 3) and started["met"] is False
    assert started["ratio_of_medians"] == 1.0
    assert started["per_round"] == per_round
    assert started["met_rounds"] == 1 and started["rounds"] == 3
    # warm p50 25 vs 20, 30 vs 22, 20 vs 25: met in round 3 only; median ratio 1.25
    assert versus["warm_p50"]["met_rounds"] == 1 and versus["warm_p50"]["ratio"] == 1.25
    assert versus["warm_p50"]["met"] is False
    assert "met_rounds" not in versus["cold_over_warm_p50"]
    # the rounds' own peer results were not given ratios by the per-round comparison
    assert theirs[2][0].ratios == {}


def test_a_peer_missing_from_a_round_is_the_median_of_the_rounds_it_ran() -> None:
    def measure_peers(n: int) -> list[peers.PeerResult]:
        return [_peer("saq", 10, 2000)] if n == 2 else []  # failed in round 3

    _, medians, figures = rounds.run(
        3,
        _ours(25, 1000),
        [_peer("saq", 20, 1000), _peer("celery", 40, 800)],
        lambda n: _ours(25, 1000),
        measure_peers,
    )
    by_name = {p.name: p for p in medians}
    assert by_name["saq"].started_per_s == 1500 and by_name["saq"].warm.p50_ms == 15
    assert by_name["celery"].started_per_s == 800
    assert figures[2]["peers"] == {} and figures[2]["versus_best_peer"] == {}
    versus = peers.compare(_lat(25, 50), _lat(30, 60), 1000, medians)
    rounds.tally(versus, figures)
    assert versus["started_per_s"]["rounds"] == 2  # the round with no peer has no ratio


def test_median_latency_takes_each_figure_apart() -> None:
    xs = [_lat(10, 90), _lat(30, 50), _lat(20, 70)]
    m = rounds.median_latency(xs)
    assert (m.p50_ms, m.p99_ms) == (20, 70)
    assert m.mean_ms == statistics.median(x.mean_ms for x in xs)
    assert m.max_ms == 70 and m.samples == 300


def test_rounds_is_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(rounds=0) == 2
    assert "need --rounds >= 1" in capsys.readouterr().err
    assert main(rounds=2, archiver=True) == 2
    assert "--rounds 1 with --archiver" in capsys.readouterr().err


def test_a_single_run_gets_no_round_tallies() -> None:
    versus = peers.compare(_lat(25, 50), _lat(30, 60), 1000, [_peer("saq", 20, 1100)])
    before = {k: dict(v) for k, v in versus.items()}
    rounds.tally(versus, [])
    assert versus == before


def test_a_peer_failing_in_several_rounds_keeps_each_rounds_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from streamward.tools.bench import invoke

    def broken(peer: peers.Peer, *args: object) -> peers.PeerResult:
        raise RuntimeError(f"{peer.name} workers died")

    monkeypatch.setattr(peers, "run_peer", broken)
    failed: dict[str, str] = {}
    saq = next(p for p in peers.PEERS if p.name == "saq")
    console = Console(quiet=True)
    assert invoke._measure_peers([saq], 4, 40, console, failed, "round 2: ") == []
    assert invoke._measure_peers([saq], 4, 40, console, failed, "round 3: ") == []
    assert failed == {
        "saq": "round 2: RuntimeError: saq workers died; round 3: RuntimeError: saq workers died"
    }
