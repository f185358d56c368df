"""``streamward runner``: run a replica; ``streamward runner check``: its liveness probe."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from streamward.tools.clikit import settings_error

# settings field -> the flag that sets it, named in one-line settings errors
RUNNER_FLAGS = {
    "replica_id": "--replica-id",
    "handler": "--handler",
    "max_sessions": "--max-sessions",
    "redis_url": "--redis-url",
    "api_url": "--api-url",
    "admin_token": "--admin-token",
    "drain_timeout_s": "--drain-timeout",
    "metrics_port": "--metrics-port",
}

GC_GEN0_THRESHOLD = 30_000  # Python's default is 700; as the API's (api/main.py)

app = typer.Typer(
    help="Run a runner replica (every option is also read from STREAMWARD_* env vars).",
    invoke_without_command=True,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    replica_id: Annotated[
        str | None,
        typer.Option(help="Replica id (env STREAMWARD_REPLICA_ID, else $POD_NAME, else host-pid)."),
    ] = None,
    handler: Annotated[
        list[str] | None,
        typer.Option(
            help="\\[type=]module:callable, repeatable: the session types served and their "
            "handlers; no type= means the default type (env STREAMWARD_HANDLER, "
            "comma-separated; default: the echo handler)."
        ),
    ] = None,
    max_sessions: Annotated[
        int | None, typer.Option(help="Most sessions owned at once (env STREAMWARD_MAX_SESSIONS).")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (env STREAMWARD_REDIS_URL).")
    ] = None,
    api_url: Annotated[
        str | None, typer.Option(help="API base URL for ingest (env STREAMWARD_API_URL).")
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            help="The API's admin token, for ingest (env STREAMWARD_ADMIN_TOKEN); checked at "
            "start: a missing or refused token exits 2 before any session is claimed."
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds runs may finish on SIGTERM (env STREAMWARD_DRAIN_TIMEOUT_S)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics (env STREAMWARD_METRICS_PORT).")
    ] = None,
) -> None:
    """Claim sessions, run the handler, ship transcripts; drain on SIGTERM / SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    overrides: dict[str, Any] = {
        "replica_id": replica_id,
        "handler": ",".join(handler) if handler else None,
        "max_sessions": max_sessions,
        "redis_url": redis_url,
        "api_url": api_url,
        "admin_token": admin_token,
        "drain_timeout_s": drain_timeout,
        "metrics_port": metrics_port,
    }
    raise typer.Exit(_run({k: v for k, v in overrides.items() if v is not None}))


def _run(overrides: dict[str, Any]) -> int:
    from pydantic import ValidationError

    from streamward.core.logs import setup_logging
    from streamward.core.tracing import setup_tracing
    from streamward.runner.config import RunnerSettings
    from streamward.runner.handlers import HandlerLoadError, load_handlers
    from streamward.runner.replica import Replica

    try:
        settings = RunnerSettings(**overrides)
    except ValidationError as exc:
        typer.echo(f"error: {settings_error(exc, RUNNER_FLAGS)}", err=True)
        return 2
    try:
        handler = load_handlers(settings.handler, settings.default_type)
    except HandlerLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    # JSON lines on stdout (human-readable on a terminal), every line with the replica id
    setup_logging(settings.log_level, replica_id=settings.replica_id)
    setup_tracing("streamward-runner")  # only when OTEL_* asks for it (docs/operations.md)
    code = _probe(settings)
    if code:
        return code
    code = _check_api(settings)
    if code:
        return code
    # the imported code and settings live as long as the process: keep them out of the cyclic
    # GC's full collections, and make young collections rarer (see api.main.freeze_heap)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    with _loop_runner() as runner:
        return runner.run(Replica(settings, handler).serve())


def _loop_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when it is installed (it comes with uvicorn[standard]):
    the runner is a loop of small socket reads and writes, which uvloop does at a fraction of
    the CPU of the default selector loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _check_api(settings: Any) -> int:
    """2 when the API refuses this runner's admin token: checked before any session is
    claimed (an API that is down is waited for, as Redis is)."""
    from streamward.runner.api_check import TokenRefused, check_ingest_token

    try:
        asyncio.run(check_ingest_token(settings.api_url, settings.admin_token))
    except TokenRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    return 0


def _probe(settings: Any) -> int:
    """The startup capability probe (lua/probe.py): 2 when Redis cannot run streamward (no
    scripting, wrong mode, a replica, too old). An unreachable Redis is no error here: the
    replica keeps retrying until it answers."""
    import logging

    from redis.exceptions import RedisError

    from streamward.lua.probe import ProbeError, probe_config

    log = logging.getLogger("streamward.runner")
    cfg = settings.redis_config()
    try:
        found = asyncio.run(probe_config(cfg))
    except ProbeError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (RedisError, OSError) as exc:
        log.warning("redis not reachable yet (%s): %r", cfg.describe(), exc)
        return 0
    log.info("redis: %s", found.line())
    return 0


@app.command("check")
def check(
    replica_id: Annotated[
        str | None,
        typer.Option(help="Replica to check (env STREAMWARD_REPLICA_ID, else $POD_NAME)."),
    ] = None,
    heartbeat_file: Annotated[
        Path | None, typer.Option(help="Heartbeat file (env STREAMWARD_HEARTBEAT_FILE).")
    ] = None,
    max_age_ms: Annotated[
        int | None,
        typer.Option(help="Oldest acceptable heartbeat (default: STREAMWARD_REPLICA_TTL_MS)."),
    ] = None,
) -> None:
    """Exit 0 when this replica renewed its lease recently (liveness probe; no Redis call)."""
    from pydantic import ValidationError

    from streamward.runner.config import RunnerSettings, heartbeat_path

    try:
        settings = RunnerSettings(replica_id=replica_id or "check")
    except ValidationError as exc:
        typer.echo(f"error: {settings_error(exc, RUNNER_FLAGS)}", err=True)
        raise typer.Exit(2) from None
    rid = replica_id or os.environ.get("STREAMWARD_REPLICA_ID") or os.environ.get("POD_NAME")
    path = heartbeat_file or (Path(settings.heartbeat_file) if settings.heartbeat_file else None)
    if path is None:
        if not rid:
            typer.echo(
                "error: which replica? pass --replica-id (or set STREAMWARD_REPLICA_ID / "
                "POD_NAME), or --heartbeat-file",
                err=True,
            )
            raise typer.Exit(2)
        path = heartbeat_path(rid)
    limit_ms = max_age_ms if max_age_ms is not None else settings.replica_ttl_ms
    try:
        age_ms = (time.time() - path.stat().st_mtime) * 1000
    except FileNotFoundError:
        typer.echo(f"unhealthy: no heartbeat file at {path}")
        raise typer.Exit(1) from None
    if age_ms > limit_ms:
        typer.echo(f"unhealthy: last heartbeat {age_ms / 1000:.1f}s ago (limit {limit_ms} ms)")
        raise typer.Exit(1)
    typer.echo(f"ok: last heartbeat {age_ms / 1000:.1f}s ago")
