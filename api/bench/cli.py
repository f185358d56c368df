"""``streamward bench ...``: figures and ratios against a baseline measured in the same run."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks (figures + ratios against a baseline measured in the same run).")

Output = Annotated[str, typer.Option("-o", "--output", help="table or json")]


@app.command("heartbeat")
def heartbeat(
    leases: Annotated[int, typer.Option(help="Session leases to renew.")] = 10_000,
    output: Output = "table",
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting one.")
    ] = None,
) -> None:
    """Batch lease renewal vs redis-py Lock.extend one by one; replica heartbeat cost."""
    from api.bench.heartbeat import main as run

    raise typer.Exit(run(leases=leases, output=output, redis_url=redis_url))


@app.command("failover")
def failover(
    trials: Annotated[int, typer.Option(help="Trials per fault kind.")] = 20,
    output: Output = "table",
) -> None:
    """Time from kill -9 / SIGTERM of an owner to the new owner's run.started."""
    from api.bench.failover import main as run

    raise typer.Exit(run(trials=trials, output=output))


@app.command("invoke")
def invoke(
    concurrency: Annotated[int, typer.Option(help="Concurrent callers.")] = 50,
    requests: Annotated[int, typer.Option(help="Detached invokes in all.")] = 1000,
    output: Output = "table",
) -> None:
    """Detached invoke latency and admin ingest throughput vs raw Redis."""
    from api.bench.invoke import main as run

    raise typer.Exit(run(concurrency=concurrency, requests=requests, output=output))
