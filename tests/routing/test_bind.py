"""bindSession-1.lua: one session per (route, key), generations on expiry."""

from __future__ import annotations

import asyncio
from typing import Any

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
    late: dict[str, Any] = {"session_timeout_ms": HOUR_MS, "daily_reset_hour": None}
    late["clock_offset_ms"] = HOUR_MS + 1
    due = await routes.bind("p", "r", "k", **late)
    # due, not rotated: the caller checks the generation is quiet first
    assert (due.action, due.session_id, due.reason) == ("due", g1.session_id, "timeout")
    g2 = await routes.bind("p", "r", "k", mode="rotate", expected_session_id=g1.session_id, **late)
    assert (g2.action, g2.generation, g2.reason) == ("started", 2, "timeout")
    # a second rotation naming the old generation lost the race: it queues to the new one
    again = await routes.bind(
        "p", "r", "k", mode="rotate", expected_session_id=g1.session_id, **late
    )
    assert (again.action, again.session_id) == ("queued", g2.session_id)
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
    assert (after.action, after.reason) == ("due", "daily")
    # pending: every later event sees the same due reset until it is rotated
    pending = await routes.bind("p", "r", "k", session_timeout_ms=7 * DAY_MS, daily_reset_hour=hour)
    assert (pending.action, pending.reason) == ("due", "daily")


async def test_manual_reset_forces_a_new_generation(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    g1 = await routes.bind("p", "r", "k", session_timeout_ms=HOUR_MS, daily_reset_hour=None)
    args: dict[str, Any] = {"session_timeout_ms": HOUR_MS, "daily_reset_hour": None}
    await routes.mark_reset("p", "r", "k", "manual")
    due = await routes.bind("p", "r", "k", **args)
    assert (due.action, due.reason) == ("due", "manual")
    g2 = await routes.bind("p", "r", "k", mode="rotate", expected_session_id=g1.session_id, **args)
    assert (g2.generation, g2.reason, g2.previous_session_id) == (2, "manual", g1.session_id)
    assert (await routes.bind("p", "r", "k", **args)).action == "queued"  # the reset was taken


async def test_idle_falls_due_and_activity_clears_it(redis_client: aioredis.Redis) -> None:
    routes = RouteStore(redis_client, Keys())
    args: dict[str, Any] = {"session_timeout_ms": 0, "daily_reset_hour": None}
    args["idle_timeout_ms"] = 600_000
    g1 = await routes.bind("p", "r", "k", **args)
    # no session timeout (0): a day later only idle is due
    assert (await routes.bind("p", "r", "k", clock_offset_ms=599_000, **args)).action == "queued"
    due = await routes.bind("p", "r", "k", clock_offset_ms=599_000 + 600_000, **args)
    assert (due.action, due.reason) == ("due", "idle")
    # the session's own activity disproved it: cleared, the event queues
    cleared = await routes.bind(
        "p",
        "r",
        "k",
        mode="clear",
        expected_session_id=g1.session_id,
        clock_offset_ms=599_000 + 600_000,
        **args,
    )
    assert (cleared.action, cleared.session_id) == ("queued", g1.session_id)
    assert "reset_pending" not in await routes.binding("p", "r", "k")
