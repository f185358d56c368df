"""The record's schema: Alembic up and down on a real PostgreSQL, and the start-up check."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from streamward.api.record import migrate
from streamward.api.record.db import make_engine
from streamward.api.record.tables import metadata

TABLES = {"sessions", "runs", "ownership_events", "transcript_entries"}


async def _tables(url: str) -> set[str]:
    eng = make_engine(url)
    try:
        async with eng.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    finally:
        await eng.dispose()
    return names - {"alembic_version"}


async def test_upgrade_then_downgrade_leaves_an_empty_database(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        assert await migrate.current_revision(eng) is None
        await migrate.upgrade(eng)
        assert await migrate.current_revision(eng) == migrate.head_revision()
        assert await _tables(database_url) == TABLES
        await migrate.downgrade(eng)
        assert await migrate.current_revision(eng) is None
        assert await _tables(database_url) == set()
        await migrate.upgrade(eng)  # and up again, cleanly
        assert await _tables(database_url) == TABLES
    finally:
        await eng.dispose()


async def test_migrations_create_what_the_code_declares(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        await migrate.upgrade(eng)
        async with eng.connect() as conn:
            cols = await conn.run_sync(
                lambda c: {t: {col["name"] for col in sa.inspect(c).get_columns(t)} for t in TABLES}
            )
    finally:
        await eng.dispose()
    assert cols == {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}


async def test_start_up_check_refuses_an_unmigrated_schema(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        with pytest.raises(migrate.SchemaNotReady) as err:
            await migrate.check_schema(eng)
        assert "streamward db upgrade" in str(err.value)
        assert "\n" not in str(err.value)
        await migrate.upgrade(eng)
        await migrate.check_schema(eng)  # at head: passes
    finally:
        await eng.dispose()
