"""The ``streamward`` console script: one typer app composed of each package's commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer
import typer.main

from streamward.tools.bench.cli import app as bench_app
from streamward.tools.clikit import port_in_use, quiet_flags, settings_or_exit, version
from streamward.tools.probe_cli import probe_command
from streamward.tools.record_cli import archiver_command, db_app
from streamward.tools.routes_cli import routes_app, sources_app
from streamward.tools.runner_cli import app as runner_app
from streamward.tools.sre import locks_app, replicas_app
from streamward.tools.token_cli import token_app

app = typer.Typer(
    name="streamward",
    help="Redis-backed session stream ownership: runners, HTTP API, SRE tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(runner_app, name="runner")
app.add_typer(bench_app, name="bench")
app.command("probe")(probe_command)
app.add_typer(locks_app, name="locks")
app.add_typer(replicas_app, name="replicas")
app.add_typer(routes_app, name="routes")
app.add_typer(sources_app, name="sources")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.command("archiver")(archiver_command)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"streamward {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Redis-backed session stream ownership: runners, HTTP API, SRE tools."""


API_FLAGS = {"host": "--host", "port": "--port", "redis_url": "--redis-url"}


@app.command("api")
def api_command(
    host: Annotated[
        str | None, typer.Option(help="Bind address (env STREAMWARD_HOST; default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (env STREAMWARD_PORT; default 8700).")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL (env STREAMWARD_REDIS_URL; default redis://127.0.0.1:6379)."),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            help="Second listener for /admin (runners' ingest), probes and metrics, with its "
            "own connection limit (env STREAMWARD_ADMIN_PORT; default: none, all on --port)."
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve /v1 without API tokens on a non-loopback bind "
            "(env STREAMWARD_INSECURE_NO_AUTH).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (public /v1 and admin /admin)."""
    from streamward.api.config import get_settings
    from streamward.api.main import serve
    from streamward.tools.server import port_free

    settings = settings_or_exit(get_settings, API_FLAGS)
    bind = host or settings.host
    for number, flag in ((port or settings.port, "--port"), (admin_port, "--admin-port")):
        if number is not None and not port_free(number, bind):
            typer.echo(f"error: {port_in_use(number, flag, 'api')}", err=True)
            raise typer.Exit(2)
    code = serve(
        host=host,
        port=port,
        redis_url=redis_url,
        admin_port=admin_port,
        insecure_no_auth=True if insecure_no_auth else None,
    )
    raise typer.Exit(code)


@app.command("dev")
def dev_command(
    runners: Annotated[int, typer.Option(help="Runner replicas to start.")] = 2,
    port: Annotated[int, typer.Option(help="API port.")] = 8700,
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of an embedded one.")
    ] = None,
    no_demo: Annotated[bool, typer.Option("--no-demo", help="Skip the demo.")] = False,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="Stop once the demo has run.")
    ] = False,
    handler: Annotated[
        list[str] | None,
        typer.Option(
            help="\\[type=]module:callable, repeatable, as for `streamward runner` (default: "
            "echo; with a handler of your own the echo demo is skipped)."
        ),
    ] = None,
    no_record: Annotated[
        bool,
        typer.Option("--no-record", help="No embedded PostgreSQL record and archiver."),
    ] = False,
) -> None:
    """Run the whole system locally: embedded Redis, the API and runners, and a demo."""
    from streamward.tools.dev import main as dev

    raise typer.Exit(
        dev(
            runners=runners,
            port=port,
            redis_url=redis_url,
            demo=not no_demo,
            exit_after_demo=exit_after_demo,
            handlers=handler or [],
            record=not no_record,
        )
    )


@app.command("chaos")
def chaos_command(
    duration: Annotated[
        str, typer.Option(help="Fault phase: 90 (seconds), 60s, 5m, 30m, 1h.")
    ] = "60s",
    seed: Annotated[
        int | None, typer.Option(help="Seed of the fault schedule (default: random, printed).")
    ] = None,
    runners: Annotated[int, typer.Option(help="Runner replicas.")] = 4,
    apis: Annotated[int, typer.Option(help="API instances.")] = 2,
    sessions: Annotated[int, typer.Option(help="Sessions the load spreads over.")] = 200,
    rate: Annotated[float, typer.Option(help="Invokes per second.")] = 10.0,
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the workdir (process logs, audit, Redis data).")
    ] = False,
    faults: Annotated[
        str,
        typer.Option(
            help="Fault kinds and weights: 'all' (default) or a comma list of kind[=weight]; "
            "'all,-poison' drops one, 'all,poison=2' reweights one. Kinds: runner_kill9, "
            "runner_sigstop, runner_sigterm, api_kill9, redis_restart, burst, delayed_write, "
            "force_release, runner_drain, session_delete, route_reset, poison."
        ),
    ] = "",
) -> None:
    """Real fleet under seeded faults; exit 1 when fencing or delivery checks fail."""
    from streamward.tools.chaos import main as chaos

    raise typer.Exit(
        chaos(
            duration=duration,
            seed=seed,
            runners=runners,
            apis=apis,
            sessions=sessions,
            rate=rate,
            output=output,
            keep=keep,
            faults=faults,
        )
    )


def command() -> Any:
    """The click command tree behind ``app``, with flags shown without a type."""
    return quiet_flags(typer.main.get_command(app))


def main() -> None:
    command()(prog_name="streamward")


if __name__ == "__main__":
    main()
