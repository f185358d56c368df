"""bindSession-1.lua: one session per (route, key), generations on expiry."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from streamward.lua.keys import Keys
from streamward.lua.routes import RouteStore

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


async def test_first_event_starts_later_events_queue(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    first = await routes.bind(
        "p", "gh-pr", "org/repo#1", session_timeout_ms=HOUR_MS, daily_reset_hour=None
    )
    again = await routes.bind(
        "p", "gh-pr", "org/repo#1", session_timeout_ms=HOUR_MS, daily_reset_hour=None
    )
    other = await routes.bind(
        "p", "gh-pr", "org/repo#2", session_timeout_ms=HOUR_MS, daily_reset_hour=None
    )
    assert (first.action, first.generation, first.reason) == ("started", 1, "")
    assert (again.action, again.session_id) == ("queued", first.session_id)
    assert other.action == "started" and other.session_id != first.session_id
    # derived and stable: the same key under another route or project is another session
    elsewhere = await routes.bind(
        "q", "gh-pr", "org/repo#1", session_timeout_ms=HOUR_MS, daily_reset_hour=None
    )
    assert elsewhere.action == "started"
    assert Keys().session("p", first.session_id)  # a valid session id


async def test_burst_of_concurrent_events_for_a_new_key_makes_one_session(
    redis_client: aioredis.Redis,
) -> None:
    routes = RouteStore(redis_client, Keys())
    results = await asyncio.gather(
        *[
            routes.bind("p", "chat", "thread-9", session_timeout_ms=HOUR_MS, daily_reset_hour=None)
            for _ in range(50)
        ]
    )
    assert sorted(r.action for r in results).count("started") == 1
    assert len({r.session_id for r in results}) == 1


async def test_session_timeout_opens_a_new_generation(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    g1 = await routes.bind("p", "r", "k", session_timeout_ms=HOUR_MS, daily_reset_hour=None)
    still = await routes.bind(
        "p",
        "r",
        "k",
        session_timeout_ms=HOUR_MS,
        daily_reset_hour=None,
        clock_offset_ms=HOUR_MS - 60_000,
    )
    assert still.action == "queued"
    g2 = await routes.bind(
        "p",
        "r",
        "k",
        session_timeout_ms=HOUR_MS,
        daily_reset_hour=None,
        clock_offset_ms=HOUR_MS + 1,
    )
    assert (g2.action, g2.generation, g2.reason) == ("started", 2, "timeout")
    assert g2.previous_session_id == g1.session_id and g2.session_id != g1.session_id
    binding = await routes.binding("p", "r", "k")
    assert binding["reason:1"] == "timeout" and binding["generation"] == "2"


async def test_daily_reset_hour_opens_a_new_generation(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    sec, _ = await redis_client.time()
    now_ms = int(sec) * 1000
    # pick the reset hour 2 hours from now (UTC): no reset until the clock passes it
    hour = ((now_ms % DAY_MS) // HOUR_MS + 2) % 24
    await routes.bind("p", "r", "k", session_timeout_ms=7 * DAY_MS, daily_reset_hour=hour)
    before = await routes.bind(
        "p", "r", "k", session_timeout_ms=7 * DAY_MS, daily_reset_hour=hour, clock_offset_ms=HOUR_MS
    )
    assert before.action == "queued"
    after = await routes.bind(
        "p",
        "r",
        "k",
        session_timeout_ms=7 * DAY_MS,
        daily_reset_hour=hour,
        clock_offset_ms=3 * HOUR_MS,
    )
    assert (after.action, after.reason) == ("started", "daily")


async def test_manual_reset_forces_a_new_generation(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    g1 = await routes.bind("p", "r", "k", session_timeout_ms=HOUR_MS, daily_reset_hour=None)
    g2 = await routes.bind(
        "p", "r", "k", session_timeout_ms=HOUR_MS, daily_reset_hour=None, reset_reason="manual"
    )
    assert (g2.generation, g2.reason, g2.previous_session_id) == (2, "manual", g1.session_id)
