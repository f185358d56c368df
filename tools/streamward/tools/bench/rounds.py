"""``streamward bench invoke --rounds N``: the race against the job queues, run N times.

On a small shared machine one run's throughput ratio against a peer moves by ±20 % from one
run to the next (docs/performance.md has two full runs a day apart, 1.01x and 0.71x, on the
same code): a slow spell of the VM lands on whichever system is measuring. So each round
measures streamward (a fresh redis-server, API and runners) and every peer (each on its own
fresh redis-server and workers), and the order alternates, streamward first in odd rounds
and the peers first in even ones (A B B A ...), so a drift of the machine falls on both
sides. The figures compared are each system's **median over the rounds**; every round's
own figures and ratios are kept beside them, with how many rounds met each target.

Round 1 is the full bench (single caller, raw baselines, ingest); later rounds repeat round
1's prelude (the warm-up and the single caller: a fleet measured in its first seconds
answers the cold burst up to twice as slowly) and what the comparison needs: the cold,
burst and warm invokes with their CPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from streamward.tools.bench.invoke import Latency
from streamward.tools.bench.peers import PeerResult, compare, ratio_met

COMPARED = ("warm_p50", "warm_p99", "started_per_s")


@dataclass
class SystemRound:
    """What one round measured of one system (streamward or a peer)."""

    warm: Latency
    cold: Latency
    burst: Latency | None
    started_per_s: float
    cpu_ms_per_invoke: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)  # streamward's answers (running...)


def median_latency(xs: list[Latency]) -> Latency:
    """Each figure's median over the rounds; samples is their sum."""
    return Latency(
        samples=sum(x.samples for x in xs),
        p50_ms=statistics.median(x.p50_ms for x in xs),
        p99_ms=statistics.median(x.p99_ms for x in xs),
        mean_ms=statistics.median(x.mean_ms for x in xs),
        max_ms=statistics.median(x.max_ms for x in xs),
    )


def _median_cpu(xs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in xs[0] if all(k in x for x in xs)]
    return {k: round(statistics.median(x[k] for x in xs), 3) for k in keys}


def median_system(rounds: list[SystemRound]) -> SystemRound:
    bursts = [r.burst for r in rounds if r.burst is not None]
    return SystemRound(
        warm=median_latency([r.warm for r in rounds]),
        cold=median_latency([r.cold for r in rounds]),
        burst=median_latency(bursts) if bursts else None,
        started_per_s=round(statistics.median(r.started_per_s for r in rounds), 1),
        cpu_ms_per_invoke=_median_cpu([r.cpu_ms_per_invoke for r in rounds]),
    )


def median_peer(results: list[PeerResult]) -> PeerResult:
    """One peer's median over the rounds it ran in (its ratios are filled by ``compare``)."""
    m = median_system([of_peer(p) for p in results])
    return replace(
        results[0],
        warm=m.warm,
        cold=m.cold,
        burst=m.burst,
        started_per_s=m.started_per_s,
        cpu_ms_per_invoke=m.cpu_ms_per_invoke,
        ratios={},
    )


def of_peer(p: PeerResult) -> SystemRound:
    return SystemRound(p.warm, p.cold, p.burst, p.started_per_s, p.cpu_ms_per_invoke)


def _figures(s: SystemRound) -> dict[str, Any]:
    out: dict[str, Any] = {
        "warm_p50_ms": s.warm.p50_ms,
        "warm_p99_ms": s.warm.p99_ms,
        "cold_p50_ms": s.cold.p50_ms,
        "started_per_s": s.started_per_s,
        "cpu_ms_per_trip": s.cpu_ms_per_invoke.get("total", 0.0),
    }
    if s.statuses:
        out["statuses"] = s.statuses
    return out


def round_figures(number: int, ours: SystemRound, peers: list[PeerResult]) -> dict[str, Any]:
    """One round for the JSON: every system's figures and streamward's ratios to the round's
    best peer (``compare`` on copies, so the round's own PeerResults keep no ratios)."""
    versus = compare(
        ours.warm, ours.cold, ours.started_per_s, [replace(p, ratios={}) for p in peers]
    )
    return {
        "round": number,
        "order": "streamward first" if number % 2 else "peers first",
        "streamward": _figures(ours),
        "peers": {p.name: _figures(of_peer(p)) for p in peers},
        "versus_best_peer": {
            k: {"peer": v["peer"], "ratio": v["ratio"], "met": v["met"]}
            for k, v in versus.items()
            if k in COMPARED
        },
    }


def run(
    rounds: int,
    first: SystemRound,
    first_peers: list[PeerResult],
    measure_streamward: Callable[[int], SystemRound],
    measure_peers: Callable[[int], list[PeerResult]],
) -> tuple[SystemRound, list[PeerResult], list[dict[str, Any]]]:
    """Rounds 2..``rounds`` after the first (measured by the caller), in alternating order;
    (streamward's medians, every peer's medians, each round's figures)."""
    ours = [first]
    theirs = [first_peers]
    for n in range(2, rounds + 1):
        if n % 2:
            ours.append(measure_streamward(n))
            theirs.append(measure_peers(n))
        else:
            theirs.append(measure_peers(n))
            ours.append(measure_streamward(n))
    by_name: dict[str, list[PeerResult]] = {}
    for peers in theirs:
        for p in peers:
            by_name.setdefault(p.name, []).append(p)
    medians = [median_peer(ps) for ps in by_name.values()]
    pairs = enumerate(zip(ours, theirs, strict=True), start=1)
    figures = [round_figures(n, o, t) for n, (o, t) in pairs]
    return median_system(ours), medians, figures


def tally(versus: dict[str, Any], figures: list[dict[str, Any]]) -> None:
    """Judge each compared figure of ``versus`` (``compare``'s output on the medians) by the
    median of the rounds' own ratios; nothing for a single run.

    Each round's ratio pairs two systems measured minutes apart, in alternating order; the
    ratio of two medians may pair one system's fast spell with the other's slow one (a run
    whose rounds met a target 2 times out of 3 showed 0.93x). The ratio of the medians is
    kept as ``ratio_of_medians``, with ``per_round`` and ``met_rounds`` of ``rounds``."""
    if not figures:
        return
    for key in COMPARED:
        if key not in versus:
            continue
        per_round = [f["versus_best_peer"][key] for f in figures if key in f["versus_best_peer"]]
        if not per_round:
            continue
        v = versus[key]
        v["ratio_of_medians"] = v["ratio"]
        v["ratio"] = round(statistics.median(r["ratio"] for r in per_round), 3)
        v["met"] = ratio_met(key, v["ratio"])
        v["per_round"] = [r["ratio"] for r in per_round]
        v["met_rounds"] = sum(1 for r in per_round if r["met"])
        v["rounds"] = len(per_round)
