"""Concurrent claimants: exactly one wins; successive owners get strictly increasing tokens."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import LeaseHeld, StaleToken
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.leases import Lease
from streamward.lua.store import LeaseStore
from streamward.tools.server import RedisServer
from tests.lua.helpers import LEASE_TTL_MS, entries, epoch, log_ids

CLAIMANTS = 50


async def _race(
    stores: list[LeaseStore], session: SessionKeys, round_: int
) -> list[Lease | LeaseHeld]:
    """Every store (its own replica id and incarnation) tries to acquire at the same moment."""
    go = asyncio.Event()
    all_ready = asyncio.Event()
    ready = 0

    async def claim(i: int, store: LeaseStore) -> Lease | LeaseHeld:
        nonlocal ready
        await store.client.ping()  # connection open before the start signal
        ready += 1
        if ready == len(stores):
            all_ready.set()
        await go.wait()
        try:
            return await store.acquire(session, f"replica-{i}", f"inc-{round_}-{i}", LEASE_TTL_MS)
        except LeaseHeld as held:
            return held

    tasks = [asyncio.create_task(claim(i, s)) for i, s in enumerate(stores)]
    await all_ready.wait()
    go.set()
    return await asyncio.gather(*tasks)


def _winner(results: list[Lease | LeaseHeld]) -> Lease:
    wins = [r for r in results if isinstance(r, Lease)]
    assert len(wins) == 1, f"{len(wins)} winners"
    win = wins[0]
    assert win.fresh
    losers = [r for r in results if isinstance(r, LeaseHeld)]
    assert len(losers) == len(results) - 1
    for held in losers:  # every loser is told who won, with the winner's token
        assert (held.replica_id, held.incarnation, held.token) == (
            win.replica_id,
            win.incarnation,
            win.token,
        )
        assert 0 < held.pttl_ms <= LEASE_TTL_MS
    return win


async def test_fifty_claimants_race_for_one_lease(
    redis_server: RedisServer, redis_client: aioredis.Redis, keys: Keys
) -> None:
    session = keys.session("proj", "contended")
    # each claimant has its own connection, so the calls really interleave at the server
    clients = [
        aioredis.Redis.from_url(redis_server.url, decode_responses=True) for _ in range(CLAIMANTS)
    ]
    stores = [LeaseStore(c, keys) for c in clients]
    try:
        win = _winner(await _race(stores, session, 0))
        assert win.token == 1 == await epoch(redis_client, session)
        holder = await redis_client.hgetall(session.lease)
        assert (holder["replica"], holder["incarnation"]) == (win.replica_id, win.incarnation)
        meta = await redis_client.hgetall(session.meta)
        assert meta["transitions"] == "1"
        indexed = [
            i
            for i in range(CLAIMANTS)
            if await redis_client.scard(keys.replica(f"replica-{i}").leases)
        ]
        assert indexed == [int(win.replica_id.removeprefix("replica-"))]

        # successive owners: force-release, then race again; tokens strictly increase
        tokens = [win.token]
        for round_ in range(1, 4):
            await stores[0].force_release(session, f"round {round_}")
            nxt = _winner(await _race(stores, session, round_))
            assert nxt.token > tokens[-1]
            tokens.append(nxt.token)
        assert tokens == sorted(set(tokens))
    finally:
        for c in clients:
            await c.aclose()


async def test_racing_takeovers_of_a_dead_owner_have_one_winner(
    redis_server: RedisServer, redis_client: aioredis.Redis, keys: Keys
) -> None:
    session = keys.session("proj", "orphan")
    base = LeaseStore(redis_client, keys)
    dead = await base.acquire(session, "dead", "inc-0", LEASE_TTL_MS)
    clients = [aioredis.Redis.from_url(redis_server.url, decode_responses=True) for _ in range(20)]
    try:
        go = asyncio.Event()

        async def take(i: int, c: aioredis.Redis) -> Lease | LeaseHeld:
            await go.wait()
            try:
                return await LeaseStore(c, keys).takeover(
                    session, ("dead", "inc-0", dead.token), f"r{i}", "inc", LEASE_TTL_MS
                )
            except LeaseHeld as held:
                return held

        tasks = [asyncio.create_task(take(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(0.01)
        go.set()
        win = _winner(await asyncio.gather(*tasks))
        assert win.token == dead.token + 1 == await epoch(redis_client, session)
        assert (await redis_client.hgetall(session.meta))["takeovers"] == "1"
    finally:
        for c in clients:
            await c.aclose()


async def test_token_chain_over_takeover_force_release_and_release(
    store: LeaseStore, redis_client: aioredis.Redis, session: SessionKeys
) -> None:
    """Every ownership change yields a larger token, and only the newest token can write."""
    seq = 0
    tokens: list[int] = []
    lease = await store.acquire(session, "r0", "i0", LEASE_TTL_MS)
    tokens.append(lease.token)
    for step in range(1, 10):
        kind = step % 3
        if kind == 0:
            await store.force_release(session)
            lease = await store.acquire(session, f"r{step}", f"i{step}", LEASE_TTL_MS)
        elif kind == 1:
            lease = await store.takeover(
                session,
                (lease.replica_id, lease.incarnation, lease.token),
                f"r{step}",
                f"i{step}",
                LEASE_TTL_MS,
            )
        else:
            await store.release(session, lease.replica_id, lease.incarnation, lease.token)
            lease = await store.acquire(session, f"r{step}", f"i{step}", LEASE_TTL_MS)
        assert lease.fresh
        assert lease.token > tokens[-1], (step, tokens, lease.token)
        tokens.append(lease.token)
        seq += 1
        assert (await store.ingest(session, "run", lease.token, entries([seq]))).accepted == 1
    assert await epoch(redis_client, session) == tokens[-1]
    # every earlier token is refused now
    for old in tokens[:-1]:
        with pytest.raises(StaleToken):
            await store.ingest(session, "run", old, entries([seq + 1]))
    assert await log_ids(redis_client, session) == [f"{i}-0" for i in range(1, seq + 1)]
