"""Schema migrations (Alembic) and the start-up check that refuses an unmigrated schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaNotReady(RuntimeError):
    """The database's schema is not the one this code needs (one line, says what to run)."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def _run(engine: AsyncEngine, verb: str, target: str) -> None:
    def go(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, target)

    async with engine.begin() as conn:
        await conn.run_sync(go)


async def upgrade(engine: AsyncEngine, target: str = "head") -> None:
    await _run(engine, "upgrade", target)


async def downgrade(engine: AsyncEngine, target: str = "base") -> None:
    await _run(engine, "downgrade", target)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaNotReady unless the database is at this code's head revision."""
    head = head_revision()
    current = await current_revision(engine)
    if current != head:
        raise SchemaNotReady(
            f"database schema is at revision {current or 'none'}, this streamward needs "
            f"{head}: run `streamward db upgrade`"
        )
