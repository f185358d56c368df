"""The ``streamward`` console script: one typer app composed of each package's commands."""

from __future__ import annotations

from typing import Annotated

import typer

from api.bench.cli import app as bench_app
from runner.cli import app as runner_app

app = typer.Typer(
    name="streamward",
    help="Redis-backed session stream ownership: runners, HTTP API, SRE tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(runner_app, name="runner")
app.add_typer(bench_app, name="bench")


@app.command("api")
def api_command(
    host: Annotated[str | None, typer.Option(help="Bind address [env STREAMWARD_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env STREAMWARD_PORT, 8700].")] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [env STREAMWARD_REDIS_URL].")
    ] = None,
) -> None:
    """Serve the HTTP API (public /v1 and admin /admin)."""
    from api.main import serve

    raise typer.Exit(serve(host=host, port=port, redis_url=redis_url))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
