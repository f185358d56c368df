"""Running the archiver as a process (`streamward archiver`): clients, the schema check,
metrics, the loop. The API process uses ``open_record`` for its reads."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from streamward.api.config import Settings
from streamward.api.record import migrate, retention
from streamward.api.record.archiver import DB_DOWN, Archiver, ArchiveSettings
from streamward.api.record.db import make_engine
from streamward.api.record.retention import RetentionPolicy
from streamward.lua.archive import ArchiveCalls
from streamward.lua.client import connect_from_config
from streamward.lua.keys import Keys
from streamward.lua.streams import Streams

log = logging.getLogger("streamward.archiver")


def archive_settings(settings: Settings) -> ArchiveSettings:
    return ArchiveSettings(
        interval_s=settings.archive_interval_s,
        revisit_s=settings.archive_revisit_s,
        batch_delay_s=settings.archive_batch_delay_s,
        batch_entries=settings.archive_batch_entries,
        sessions_per_pass=settings.archive_sessions_per_pass,
        claim_s=settings.archive_claim_s,
        hot_tail_entries=settings.archive_hot_tail_entries,
        hot_tail_s=settings.archive_hot_tail_s,
    )


async def open_record(url: str, *, writer: bool = False) -> AsyncEngine:
    """An engine on a database at this code's schema; raises SchemaNotReady (one line).
    ``writer``: the archiver's (``make_engine``)."""
    engine = make_engine(url, writer=writer)
    try:
        await migrate.check_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def _export(arch: Archiver, stop: asyncio.Event, port: int) -> None:
    """Prometheus metrics of this archiver, refreshed every second."""
    r = CollectorRegistry()
    lag = Gauge("streamward_archive_lag_seconds", "Age of the longest-due session.", registry=r)
    backlog = Gauge("streamward_archive_backlog_sessions", "Sessions in the work set.", registry=r)
    db_up = Gauge("streamward_archive_db_up", "1 while the database accepts writes.", registry=r)
    entries = Counter("streamward_archive_entries", "Entries archived.", registry=r)
    trimmed = Counter("streamward_archive_trimmed_entries", "Entries trimmed in Redis.", registry=r)
    start_http_server(port, registry=r)
    seen_entries = seen_trimmed = 0
    while not stop.is_set():
        s = arch.stats
        lag.set(s.lag_s)
        backlog.set(s.backlog)
        db_up.set(1 if s.db_up else 0)
        entries.inc(s.entries - seen_entries)
        trimmed.inc(s.trimmed - seen_trimmed)
        seen_entries, seen_trimmed = s.entries, s.trimmed
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            continue


async def _retention(
    arch: Archiver, settings: Settings, stop: asyncio.Event, calls: ArchiveCalls
) -> None:
    """A bounded retention pass per interval, by whichever archiver takes the lock."""
    policy = RetentionPolicy(
        default_days=settings.record_retention_days,
        by_project=settings.record_retention_by_project,
    )
    interval_ms = int(settings.record_retention_interval_s * 1000)
    while not stop.is_set():
        try:
            if await calls.claim_retention(arch.owner, interval_ms):
                deleted = await retention.enforce(arch.engine, policy, await calls.now_ms())
                log.info("retention pass: %d rows deleted", deleted)
        except RedisError as exc:
            log.warning("retention: redis unavailable: %s", exc)
        except DB_DOWN as exc:
            log.warning("retention: database unavailable: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), min(60.0, settings.record_retention_interval_s))
        except TimeoutError:
            continue


async def run_archiver(
    settings: Settings, database_url: str, stop: asyncio.Event, metrics_port: int | None
) -> int:
    """Exit code: 0 after ``stop``, 2 when the schema is not migrated."""
    while True:
        try:
            engine = await open_record(database_url, writer=True)
            break
        except migrate.SchemaNotReady as exc:
            log.error("%s", exc)
            print(f"streamward archiver: {exc}", flush=True)
            return 2
        except DB_DOWN as exc:
            # the database may start after us (a fresh cluster): wait for it
            log.warning("archiver: database not reachable yet: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
                return 0
            except TimeoutError:
                continue
    client = connect_from_config(settings.redis_config(), socket_timeout=10.0)
    keys = Keys(settings.key_prefix)
    arch = Archiver(Streams(client, keys), ArchiveCalls(client, keys), engine,
                    archive_settings(settings))  # fmt: skip
    tasks = [
        asyncio.create_task(arch.run(stop)),
        asyncio.create_task(_retention(arch, settings, stop, arch.calls)),
    ]
    if metrics_port is not None:
        tasks.append(asyncio.create_task(_export(arch, stop, metrics_port)))
    try:
        await asyncio.gather(*tasks)
    except RedisError as exc:  # pragma: no cover - run() waits outages out
        log.error("archiver stopped: %s", exc)
        return 1
    finally:
        await client.aclose()
        await engine.dispose()
    return 0
