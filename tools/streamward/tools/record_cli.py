"""`streamward db ...` (schema migrations) and `streamward archiver` (the record's archiver)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated

import typer

from streamward.tools.clikit import settings_or_exit

db_app = typer.Typer(help="The durable record's schema in PostgreSQL (STREAMWARD_DATABASE_URL).")
URL_HELP = "PostgreSQL URL (env STREAMWARD_DATABASE_URL)."


NEEDS_EXTRA = "the record needs the db extra: pip install 'streamward[db]'"


def _need_extra() -> None:
    """Exit 2 with one line when SQLAlchemy / asyncpg / Alembic are not installed."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("sqlalchemy", "asyncpg", "alembic")):
        typer.echo(NEEDS_EXTRA, err=True)
        raise typer.Exit(2)


def _url(url: str | None) -> str:
    from streamward.api.config import Settings

    _need_extra()
    found = url or settings_or_exit(Settings).database_url
    if not found:
        typer.echo("no database: set STREAMWARD_DATABASE_URL or pass --database-url", err=True)
        raise typer.Exit(2)
    return found


def _with_engine(url: str, verb: str, target: str | None) -> str | None:
    from streamward.api.record import migrate
    from streamward.api.record.db import make_engine

    async def go() -> str | None:
        engine = make_engine(url)
        try:
            if verb == "upgrade":
                await migrate.upgrade(engine, target or "head")
            elif verb == "downgrade":
                await migrate.downgrade(engine, target or "-1")
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@db_app.command("upgrade")
def db_upgrade(
    target: Annotated[str, typer.Argument(help="Revision to reach.")] = "head",
    database_url: Annotated[str | None, typer.Option(help=URL_HELP)] = None,
) -> None:
    """Migrate the schema up (idempotent: at head it does nothing)."""
    typer.echo(f"at revision {_with_engine(_url(database_url), 'upgrade', target)}")


@db_app.command("downgrade")
def db_downgrade(
    target: Annotated[str, typer.Argument(help="Revision to reach ('base': nothing).")] = "-1",
    database_url: Annotated[str | None, typer.Option(help=URL_HELP)] = None,
) -> None:
    """Migrate the schema down (one revision by default)."""
    typer.echo(f"at revision {_with_engine(_url(database_url), 'downgrade', target) or 'none'}")


@db_app.command("current")
def db_current(database_url: Annotated[str | None, typer.Option(help=URL_HELP)] = None) -> None:
    """Print the schema's revision and this code's head; exit 1 when they differ."""
    current = _with_engine(_url(database_url), "current", None)
    from streamward.api.record.migrate import head_revision

    typer.echo(f"current {current or 'none'}, head {head_revision()}")
    if current != head_revision():
        raise typer.Exit(1)


def archiver_command(
    database_url: Annotated[str | None, typer.Option(help=URL_HELP)] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (env STREAMWARD_REDIS_URL).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Archive sessions from Redis to PostgreSQL until SIGTERM (run as many as you like)."""
    from streamward.api.config import Settings

    url = _url(database_url)  # first: says what to install when the db extra is missing
    from streamward.api.record.service import run_archiver

    settings = settings_or_exit(Settings)
    if redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url})
    stop = asyncio.Event()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await run_archiver(settings, url, stop, metrics_port)

    sys.exit(asyncio.run(main()))
