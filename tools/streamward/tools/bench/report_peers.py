"""The peer job queues of the invoke bench in docs/BENCHMARKS.md: summary rows, the
side-by-side table and its plot (bench/peers.py measures them; report.py calls these).

Every function reads the invoke bench's JSON and returns nothing to add when it has no
peers (results from before the peers were measured render as they did).
"""

from __future__ import annotations

from typing import Any

FIGURES = (
    ("warm_p50", "detached invoke p50 vs the best Redis job queue"),
    ("warm_p99", "detached invoke p99 vs the best Redis job queue"),
    ("started_per_s", "started/s vs the best Redis job queue"),
)


def unit(key: str, v: float) -> str:
    """A figure of ``versus_best_peer`` with its unit (also the fleet race's rows)."""
    return f"{v:,.0f} /s" if key == "started_per_s" else f"{v:,.2f} ms"


def _rounds(v: dict[str, Any]) -> str:
    """ ", median of 3 rounds (met in 2)" under ``--rounds``; "" for a single run."""
    if not v.get("rounds") or v["rounds"] < 2:
        return ""
    return f", median of {v['rounds']} rounds (met in {v['met_rounds']})"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**NOT met**")


def summary_rows(inv: dict[str, Any]) -> list[list[str]]:
    """Rows of the report's summary table (figure, streamward, baseline, ratio, target, met)."""
    versus = inv.get("versus_best_peer") or {}
    labels = {p["name"]: p["label"] for p in inv.get("peers") or []}
    rows = []
    # the fleet, once the bench can set it (bench invoke --runners; report_fleet.py)
    fleet = f", {fleet_words(inv)}" if "runners" in inv else ""
    for key, title in FIGURES:
        if v := versus.get(key):
            rows.append(
                [
                    f"{title}{fleet}, concurrency {inv['concurrency']}{_rounds(v)}",
                    unit(key, v["streamward"]),
                    f"{unit(key, v['peer_value'])} ({labels.get(v['peer'], v['peer'])})",
                    f"{v['ratio']:.2f}x",
                    v["target"],
                    _met(v["met"]),
                ]
            )
    if v := versus.get("cold_over_warm_p50"):
        rows.append(
            [
                "detached invoke: cold p50 ÷ warm p50 (lease acquisition included)",
                f"{inv['invoke_cold']['p50_ms']:.2f} ms",
                f"{inv['invoke']['p50_ms']:.2f} ms (warm, same run)",
                f"{v['streamward']:.2f}x",
                v["target"],
                _met(v["met"]),
            ]
        )
    return rows


def fleet_words(res: dict[str, Any]) -> str:
    """streamward's fleet in a race: "1 API + N runner(s)" (results from before ``--runners``
    had two)."""
    n = int(res.get("runners", 2))
    return f"1 API + {n} runner{'s' if n != 1 else ''}"


def table_rows(inv: dict[str, Any]) -> list[list[str]]:
    """system, warm p50, warm p99, started/s, CPU per round trip, cold p50, cold p99, ratios
    (warm p50, started/s)."""
    rows = []
    for p in inv.get("peers") or []:
        r = p.get("ratios") or {}
        rows.append(
            [
                p["label"],
                f"{p['warm']['p50_ms']:.2f}",
                f"{p['warm']['p99_ms']:.2f}",
                f"{p['started_per_s']:,.0f}",
                _cpu(p.get("cpu_ms_per_invoke")),
                f"{p['cold']['p50_ms']:.2f}",
                f"{p['cold']['p99_ms']:.2f}",
                f"{r.get('warm_p50', 0):.2f}x",
                f"{r.get('started_per_s', 0):.2f}x",
            ]
        )
    rows.append(
        [
            "**streamward detached invoke**",
            f"**{inv['invoke']['p50_ms']:.2f}**",
            f"**{inv['invoke']['p99_ms']:.2f}**",
            f"**{inv.get('invokes_per_s', 0):,.0f}**",
            f"**{_cpu(inv.get('cpu_ms_per_invoke'))}**",
            f"**{inv['invoke_cold']['p50_ms']:.2f}**",
            f"**{inv['invoke_cold']['p99_ms']:.2f}**",
            "",
            "",
        ]
    )
    return rows


TABLE_HEADER = (
    "system",
    "warm p50 ms",
    "warm p99 ms",
    "started/s",
    "CPU ms / round trip",
    "cold p50 ms",
    "cold p99 ms",
    "streamward p50 ÷ this",
    "streamward started/s ÷ this",
)

TEXT = (
    "The Redis job queues a service could put the job on instead, measured in the same run by "
    "the same {n} callers (`streamward.tools.bench.peers`): each on its own throwaway "
    "redis-server, with 2 worker processes; each job does `LPUSH started:<id>` as its first "
    "act while its caller waits in `BLPOP`. Callers and sizes as above: cold = each caller's "
    "first round trip, all sent at once (for streamward the first invoke of a new session, "
    "lease acquisition included; a peer has no lease, so its cold is the first jobs of fresh "
    "workers on a new queue), warm = every round trip after each caller's second. started/s "
    "= round trips over the warm phase's wall time. CPU per round trip: every process of the "
    "system (workers or API and runners, its redis-server, the callers) over the warm phase, "
    "from `/proc`; on a shared machine it moves far less from run to run than started/s. The "
    "peers run after streamward's API and runners have stopped, one after the other."
)


ROUNDS_HEADER = (
    "round",
    "order",
    "streamward started/s",
    "÷ best peer",
    "streamward warm p50 ms",
    "÷ best peer",
    "CPU ms / round trip: streamward",
    "lowest peer",
)

ROUNDS_TEXT = (
    "Medians of {n} rounds: the figures above are each system's median over {n} rounds "
    "(`--rounds {n}`, `streamward.tools.bench.rounds`), and each ratio in the summary is the "
    "median of the rounds' own ratios (each pairs two systems measured minutes apart). Each "
    "round measures streamward on a fresh redis-server, API and runners, and every peer on "
    "fresh ones, streamward first in odd rounds and the peers first in even ones, so a slow "
    "spell of the shared machine falls on both sides. Each round against that round's best "
    "peer:"
)


def rounds_rows(inv: dict[str, Any]) -> list[list[str]]:
    """One row per round of ``--rounds``: streamward's figures and its ratios to the
    round's best peer ([] for a single run)."""
    rows = []
    for f in inv.get("round_figures") or []:
        ours, versus = f["streamward"], f["versus_best_peer"]
        cpus = [p["cpu_ms_per_trip"] for p in f["peers"].values()]
        rows.append(
            [
                str(f["round"]),
                f["order"],
                f"{ours['started_per_s']:,.0f}",
                _ratio(versus.get("started_per_s")),
                f"{ours['warm_p50_ms']:.2f}",
                _ratio(versus.get("warm_p50")),
                f"{ours['cpu_ms_per_trip']:.2f}",
                f"{min(cpus):.2f}" if cpus else "-",
            ]
        )
    return rows


def _ratio(v: dict[str, Any] | None) -> str:
    return f"{v['ratio']:.2f}x ({v['peer']}){'' if v['met'] else ' NOT met'}" if v else "-"


def _cpu(cpu: dict[str, float] | None) -> str:
    return f"{cpu['total']:.2f}" if cpu and "total" in cpu else "-"


def notes(inv: dict[str, Any]) -> list[str]:
    out = []
    for name, why in (inv.get("peers_skipped") or {}).items():
        out.append(f"peer {name} skipped: {why}")
    for name, why in (inv.get("peers_failed") or {}).items():
        out.append(f"peer {name} **failed**: {why}")
    return out


def plot(fig: Any, inv: dict[str, Any]) -> None:
    """Warm p50/p99 (log scale: arq's default poll_delay is 100x the others) and started/s
    of every system, streamward last and highlighted."""
    systems = [(p["label"], p["warm"], p["started_per_s"]) for p in inv["peers"]]
    systems.append(("streamward", inv["invoke"], inv.get("invokes_per_s") or 0.0))
    names = [s[0].replace(" (", "\n(").replace(", ", ",\n") for s in systems]
    colors = ["C0"] * (len(systems) - 1) + ["C3"]
    ax1, ax2 = fig.subplots(1, 2)
    xs = range(len(systems))
    width = 0.4
    ax1.bar([x - width / 2 for x in xs], [s[1]["p50_ms"] for s in systems], width, color=colors)
    ax1.bar(
        [x + width / 2 for x in xs],
        [s[1]["p99_ms"] for s in systems],
        width,
        color=colors,
        alpha=0.45,
    )
    ax1.set_yscale("log")
    ax1.set_xticks(list(xs), names, fontsize=8)
    ax1.set_ylabel("warm round trip, ms (log)")
    ax1.set_title(f"p50 (solid) and p99 (light), {inv['concurrency']} callers")
    ax2.bar(list(xs), [s[2] for s in systems], color=colors)
    ax2.set_xticks(list(xs), names, fontsize=8)
    ax2.set_ylabel("started / s")
    ax2.set_title("throughput of the warm phase")
