"""``streamward bench ...``: figures and ratios against a baseline measured in the same run."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Benchmarks (figures + ratios against a baseline measured in the same run).")

Output = Annotated[str, typer.Option("-o", "--output", help="table or json")]


@app.command("heartbeat")
def heartbeat(
    leases: Annotated[
        int,
        typer.Option(help="Session leases held at the top level (levels: 1k, 10k, 100k below it)."),
    ] = 100_000,
    output: Output = "table",
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting one.")
    ] = None,
) -> None:
    """Batch lease renewal vs redis-py and python-redis-lock; heartbeat cost; memory per lease."""
    from streamward.tools.bench.heartbeat import main as run

    raise typer.Exit(run(leases=leases, output=output, redis_url=redis_url))


@app.command("failover")
def failover(
    trials: Annotated[int, typer.Option(help="Trials per fault kind.")] = 20,
    output: Output = "table",
) -> None:
    """Time from kill -9 / SIGTERM of an owner to the new owner's run.started."""
    from streamward.tools.bench.failover import main as run

    raise typer.Exit(run(trials=trials, output=output))


@app.command("invoke")
def invoke(
    concurrency: Annotated[int, typer.Option(help="Concurrent callers.")] = 50,
    requests: Annotated[int, typer.Option(help="Detached invokes in all.")] = 5000,
    output: Output = "table",
    peers: Annotated[
        list[str] | None,
        typer.Option(
            help="Peer job queues to measure beside it (repeatable or comma-separated): saq, "
            "arq-tuned, arq, celery, or none. Default: every installed one."
        ),
    ] = None,
    archiver: Annotated[
        bool,
        typer.Option(
            "--archiver",
            help="The record on: embedded PostgreSQL + an archiver; adds archive lag, rate "
            "and CPU figures.",
        ),
    ] = False,
    rounds: Annotated[
        int,
        typer.Option(
            help="Repeat streamward and the peers N times in alternating order and compare "
            "each system's medians (one run moves +-20% on a shared machine).",
        ),
    ] = 1,
    runners: Annotated[
        int,
        typer.Option(
            help="Runner processes beside the one API: 1 (default) gives streamward two "
            "server processes, as each peer has two workers.",
        ),
    ] = 1,
) -> None:
    """Detached invoke latency and ingest throughput vs raw Redis and Redis job queues."""
    from streamward.tools.bench.invoke import main as run

    raise typer.Exit(
        run(
            concurrency=concurrency,
            requests=requests,
            output=output,
            peers=peers,
            archiver=archiver,
            rounds=rounds,
            runners=runners,
        )
    )


@app.command(
    "rollout",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def rollout(
    ctx: typer.Context,
    runners: Annotated[int, typer.Option(help="Runner replicas in the fleet.")] = 4,
    output: Output = "table",
) -> None:
    """Rolling update of the runners under load; other --name value go to rollout.main()."""
    try:
        # imported by name, lazily: rollout.py is written separately and may not exist yet
        module = importlib.import_module("streamward.tools.bench.rollout")
    except ModuleNotFoundError as exc:
        if exc.name != "streamward.tools.bench.rollout":
            raise
        typer.echo("the rollout bench (streamward.tools.bench.rollout) is not installed", err=True)
        raise typer.Exit(2) from None
    run: Callable[..., int] = module.main
    extra = _extra_kwargs(run, ctx.args)
    raise typer.Exit(run(runners=runners, output=output, **extra))


def _extra_kwargs(func: Callable[..., Any], args: list[str]) -> dict[str, Any]:
    """``--some-name value`` / ``--flag`` / ``--no-flag`` as keyword arguments of ``func``."""
    params = inspect.signature(func).parameters
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise typer.BadParameter(f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key not in params and key.startswith("no_") and key[3:] in params:
            out[key[3:]] = False
            i += 1
            continue
        if key not in params:
            raise typer.BadParameter(
                f"unknown option --{name} (see streamward.tools.bench.rollout)"
            )
        kind = _scalar_type(hints.get(key), params[key].default)
        if kind is bool and not eq:
            out[key] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise typer.BadParameter(f"--{name} needs a value")
            value = args[i + 1]
            i += 1
        try:
            out[key] = _convert(kind, value)
        except ValueError as exc:
            raise typer.BadParameter(f"--{name}: {exc}") from None
        i += 1
    return out


def _scalar_type(hint: Any, default: Any) -> type:
    """int, float, bool or str: from the annotation (``X | None`` included), else the default."""
    for t in (hint, *typing.get_args(hint)):
        if t in (bool, int, float, str):
            return t  # type: ignore[no-any-return]
    if isinstance(default, bool | int | float):
        return type(default)
    return str


def _convert(kind: type, value: str) -> Any:
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return kind(value)


@app.command("all")
def all_benches(
    out: Annotated[Path, typer.Option(help="The markdown report.")] = Path("docs/BENCHMARKS.md"),
    plots_dir: Annotated[
        Path | None,
        typer.Option(help="PNG plots and results.json (default: bench/ beside the report)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Smoke run: small counts (not figures to publish).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this bench (repeatable): heartbeat, failover, invoke, fleet "
            "(invoke with two runners), archive (invoke with the record on), rollout."
        ),
    ] = None,
    with_rollout: Annotated[
        bool | None,
        typer.Option(
            "--rollout/--no-rollout",
            help="Include the rollout bench (default: with a full run, when it is installed).",
        ),
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="Measuring conditions, quoted in the report.")
    ] = None,
    from_results: Annotated[
        Path | None,
        typer.Option(help="Re-render from a results.json instead of measuring."),
    ] = None,
    leases: Annotated[int | None, typer.Option(help="heartbeat --leases.")] = None,
    trials: Annotated[int | None, typer.Option(help="failover --trials.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="--concurrency of invoke, fleet and archive.")
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="--requests of invoke, fleet and archive.")
    ] = None,
) -> None:
    """Every bench; writes docs/BENCHMARKS.md, docs/bench/*.png and docs/bench/results.json."""
    from streamward.tools.bench.report import FULL_ARGS, QUICK_ARGS, Options, main, sized

    overrides = sized(QUICK_ARGS if quick else FULL_ARGS, concurrency, requests)
    if leases is not None:
        overrides["heartbeat"] = ["--leases", str(leases)]
    if trials is not None:
        overrides["failover"] = ["--trials", str(trials)]
    opts = Options(
        out=out,
        plots_dir=plots_dir,
        quick=quick,
        only=only or (),
        rollout=with_rollout,
        note=note,
        from_results=from_results,
        overrides=overrides,
    )
    raise typer.Exit(main(opts))
