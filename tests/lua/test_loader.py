"""The script loader and typed scripts: discovery, includes, key-count check, EVALSHA with
NOSCRIPT fallback, load_all."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import ScriptError
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.loader import (
    INCLUDE_PATTERN,
    NAME_PATTERN,
    inline_includes,
    read_include,
    script_sources,
)
from streamward.lua.replies import LockClaim
from streamward.lua.scripts import SCRIPT_NAMES, ScriptName, Scripts
from streamward.lua.store import LeaseStore
from streamward.tools.server import free_port
from tests.lua.helpers import LEASE_TTL_MS


def test_script_sources_cover_every_lua_file() -> None:
    files = sorted(
        e.name for e in resources.files("streamward.lua").iterdir() if e.name.endswith(".lua")
    )
    assert files, "no lua/*.lua shipped"
    assert all(NAME_PATTERN.fullmatch(f) for f in files), files
    sources = script_sources()
    assert sorted(s.filename for s in sources.values()) == files
    for name, src in sources.items():
        assert src.name == name
        assert (resources.files("streamward.lua") / src.filename).read_text(
            encoding="utf-8"
        ) == src.raw
        assert src.source == inline_includes(src.raw, read_include)
        assert "@include" not in src.source
    assert sources["renewLeases"].num_keys is None
    assert sources["ingestEntries"].num_keys == 5


def test_every_script_has_its_typed_method() -> None:
    assert set(SCRIPT_NAMES) == set(script_sources())


def test_every_include_is_shipped_and_used() -> None:
    shipped = {
        f"includes/{e.name.removesuffix('.lua')}"
        for e in (resources.files("streamward.lua") / "includes").iterdir()
        if e.name.endswith(".lua")
    }
    texts = [s.raw for s in script_sources().values()]
    texts += [read_include(path) for path in shipped]  # an include may include another
    used = {m.group("path") for text in texts for m in INCLUDE_PATTERN.finditer(text)}
    assert (
        shipped
        == used
        == {
            "includes/history",
            "includes/ingestEntries",
            "includes/peekInbox",
            "includes/redisTime",
            "includes/statusCodes",
        }
    )
    for src in script_sources().values():  # inlined: the snippet's code is in what Redis runs
        if '"includes/redisTime"' in src.raw or "ingest_entries(" in src.raw:  # (nested)
            assert "local function redis_now_ms()" in src.source


def test_inline_includes_once_nested_and_in_place() -> None:
    files = {
        "includes/a": "-- a\nlocal A = 1\n",
        "includes/b": '--- @include "includes/a"\nlocal B = A + 1\n',
    }
    text = 'head\n--- @include "includes/b"\n--- @include "includes/a"\nbody\n'
    out = inline_includes(text, files.__getitem__)
    assert out == "head\n-- a\nlocal A = 1\nlocal B = A + 1\n\nbody\n"
    # only whole lines are directives
    assert inline_includes('x = 1 --- @include "includes/a"\n', files.__getitem__) == (
        'x = 1 --- @include "includes/a"\n'
    )


def test_unknown_include_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match=r"no Lua include includes/nope\.lua"):
        read_include("includes/nope")


def _unreachable_client() -> aioredis.Redis:
    """A client whose every command would fail: proves a check happens before Redis."""
    return aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_wrong_key_count_raises_before_reaching_redis(name: ScriptName) -> None:
    client = _unreachable_client()
    try:
        scripts = Scripts(client)
        script = scripts.script(name)
        n = script.src.num_keys
        wrong: list[list[str]] = [[]] if n is None else [[], ["k"] * (n + 1)]
        if n is not None and n > 1:
            wrong.append(["k"] * (n - 1))
        for keys in wrong:
            with pytest.raises(ScriptError, match=f"{script.src.filename} takes"):
                await script(keys, [])
            with pytest.raises(ScriptError):
                script.queue(client.pipeline(), keys, [])
    finally:
        await client.aclose()


async def test_wrong_key_count_sends_nothing(redis_client: aioredis.Redis) -> None:
    scripts = Scripts(redis_client)
    await redis_client.config_resetstat()
    with pytest.raises(ScriptError):
        await scripts.script("acquireLease")(["a", "b"], ["r", "i", 1000])
    pipe = redis_client.pipeline(transaction=False)
    with pytest.raises(ScriptError):
        scripts.script("releaseLease").queue(pipe, [], [])
    assert len(pipe) == 0
    stats = await redis_client.info("commandstats")
    assert not any(k in stats for k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script"))


async def test_sha_is_sha1_of_the_inlined_source(redis_client: aioredis.Redis) -> None:
    for script in Scripts(redis_client).all():
        assert script.sha == hashlib.sha1(script.src.source.encode()).hexdigest()
        assert script.src.source != script.src.raw  # every script includes the status codes


async def test_load_all_loads_every_script(redis_client: aioredis.Redis) -> None:
    scripts = Scripts(redis_client)
    shas = [s.sha for s in scripts.all()]
    assert len(shas) == len(script_sources())
    await redis_client.script_flush()
    assert not any(await redis_client.script_exists(*shas))
    await scripts.load_all(redis_client)
    assert all(await redis_client.script_exists(*shas))


async def test_calls_after_load_all_are_evalsha_hits(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys
) -> None:
    await store.scripts.load_all(redis_client)
    await redis_client.config_resetstat()
    await store.acquire(keys.session("p", "s"), "r1", "i", LEASE_TTL_MS)
    stats: dict[str, Any] = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert "cmdstat_script|load" not in stats and "cmdstat_script" not in stats


async def test_noscript_fallback_after_script_flush(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys
) -> None:
    session = keys.session("p", "s")
    first = await store.acquire(session, "r1", "i", LEASE_TTL_MS)
    sha = store.scripts.script("acquireLease").sha
    assert (await redis_client.script_exists(sha)) == [True]
    await redis_client.script_flush()  # e.g. a Redis restart or failover to a fresh replica
    assert (await redis_client.script_exists(sha)) == [False]
    again = await store.acquire(session, "r1", "i", LEASE_TTL_MS)
    assert again.token == first.token and not again.fresh
    assert (await redis_client.script_exists(sha)) == [True]


async def test_noscript_fallback_in_pipeline(
    redis_client: aioredis.Redis, store: LeaseStore, keys: Keys
) -> None:
    sessions: list[SessionKeys] = [keys.session("p", f"s{i}") for i in range(5)]
    leases = [(s, (await store.acquire(s, "r1", "i", LEASE_TTL_MS)).token) for s in sessions]
    await redis_client.script_flush()
    result = await store.renew_many("r1", "i", leases, LEASE_TTL_MS, chunk=2)
    assert result.renewed == sessions and result.lost == []


async def test_script_is_bound_to_no_client(redis_client: aioredis.Redis, keys: Keys) -> None:
    """A Scripts built on one client can run on another passed per call."""
    dead = _unreachable_client()
    try:
        scripts = Scripts(dead)
        # a TTL far longer than the test: the point is the client, not the expiry
        claim = await scripts.claim_lock(keys.watchdog, "r1:i", 60_000, client=redis_client)
        assert claim == LockClaim(held=True)
        assert await redis_client.get(keys.watchdog) == "r1:i"
    finally:
        await dead.aclose()
