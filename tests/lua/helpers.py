"""Shared helpers for the lua/ contract tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from streamward.lua.keys import SessionKeys
from streamward.lua.leases import Lease
from streamward.lua.store import Entry, LeaseStore

LEASE_TTL_MS = 60_000
REPLICA_TTL_MS = 5_000


def entries(seqs: Iterable[int], etype: str = "run.output", data: Any = None) -> list[Entry]:
    """One entry per seq, all of ``etype`` (``data`` defaults to ``{"seq": n}``)."""
    return [Entry(seq=s, type=etype, data={"seq": s} if data is None else data) for s in seqs]


# redis-py types replies as unions of bytes/str/None; the test client decodes, so read via Any.


async def log_ids(client: aioredis.Redis, session: SessionKeys) -> list[str]:
    """Stream ids of the session log, oldest first."""
    c: Any = client
    return [str(i) for i, _ in await c.xrange(session.log)]


async def log_entries(client: aioredis.Redis, session: SessionKeys) -> list[dict[str, str]]:
    """Fields of every log entry, oldest first."""
    c: Any = client
    return [dict(f) for _, f in await c.xrange(session.log)]


async def epoch(client: aioredis.Redis, session: SessionKeys) -> int:
    return int(await client.get(session.epoch) or 0)


async def snapshot(client: aioredis.Redis, session: SessionKeys) -> dict[str, Any]:
    """Everything ingest may write for one session (meta without its clock fields)."""
    c: Any = client
    meta = dict(await c.hgetall(session.meta))
    meta.pop("updated_ms", None)
    return {
        "log": [(str(i), dict(f)) for i, f in await c.xrange(session.log)],
        "runs": dict(await c.hgetall(session.runs)),
        "meta": meta,
        "epoch": await c.get(session.epoch),
        "lease": dict(await c.hgetall(session.lease)),
    }


async def hold(store: LeaseStore, session: SessionKeys, replica: str = "r1") -> Lease:
    """``replica`` (incarnation ``<replica>-inc``) registered and holding ``session``."""
    await store.register_replica(replica, f"{replica}-inc", REPLICA_TTL_MS)
    return await store.acquire(session, replica, f"{replica}-inc", LEASE_TTL_MS)


async def inbox_runs(client: aioredis.Redis, inbox: str) -> list[str]:
    """The run ids of the inputs pending in ``inbox``, oldest first."""
    c: Any = client
    return [f["run_id"] for _, f in await c.xrange(inbox)]
