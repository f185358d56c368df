"""``Outbox``: signed completion callbacks' Redis side: each run's callback, the delivery
records, and the due set any API process claims deliveries from.

Every outbox key shares the hash tag ``{cb}`` (``Keys.callbacks_tag``), so the three
scripts (``addDelivery-3``, ``claimDeliveries-1``, ``recordDelivery-2``) are Cluster safe;
the price is that the whole outbox lives on one Cluster node (callbacks are one per run
event named, far below the transcript's volume). HTTP, signatures and retry timing are the
service's (``streamward.api.callbacks``); here are only the atomic state changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streamward.lua import errors as E
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys
from streamward.lua.replies import as_int, as_list, as_str, status
from streamward.lua.replies import ok_reply as _ok
from streamward.lua.scripts import Scripts


@dataclass(frozen=True, slots=True)
class RunCallback:
    """What an invoke asked for: POST these entry types of the run to ``url``."""

    run_id: str
    project: str
    session_id: str
    url: str
    events: tuple[str, ...]
    created_ms: int


@dataclass(frozen=True, slots=True)
class Attempt:
    at_ms: int
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery's record (``sw:{cb}:d:<id>``)."""

    id: str
    run_id: str
    project: str
    session_id: str
    event: str
    seq: int
    url: str
    body: str
    state: str  # pending | delivered | dead
    attempts: int
    log: tuple[Attempt, ...]  # the last LOG_MAX attempts, oldest first
    created_ms: int
    next_ms: int | None  # when the next attempt is due (pending only)
    done_ms: int | None  # delivered_ms or dead_ms


@dataclass(frozen=True, slots=True)
class Claim:
    delivery_id: str
    claim: int  # the due score set by the claim: the token recordDelivery checks


@dataclass(frozen=True, slots=True)
class Recorded:
    state: str  # delivered | pending | dead
    next_ms: int | None
    attempts: int


def _opt_int(x: object) -> int | None:
    s = as_str(x) if x is not None else ""
    return int(s) if s else None


def _delivery(raw: dict[str, Any]) -> Delivery | None:
    if not raw.get("created_ms"):
        return None
    log = []
    for a in orjson.loads(raw.get("log") or "[]") or []:
        code = a.get("status_code")
        log.append(
            Attempt(int(a["at_ms"]), code if isinstance(code, int) else None, a.get("error"))
        )
    state = raw.get("state") or "pending"
    return Delivery(
        id=raw["id"],
        run_id=raw.get("run_id", ""),
        project=raw.get("project", ""),
        session_id=raw.get("session_id", ""),
        event=raw.get("event", ""),
        seq=int(raw.get("seq") or 0),
        url=raw.get("url", ""),
        body=raw.get("body", ""),
        state=state,
        attempts=int(raw.get("attempts") or 0),
        log=tuple(log),
        created_ms=int(raw["created_ms"]),
        next_ms=_opt_int(raw.get("next_ms")) if state == "pending" else None,
        done_ms=_opt_int(raw.get("delivered_ms") or raw.get("dead_ms")),
    )


class Outbox:
    """Typed calls over the callback outbox keys."""

    # attempts kept in a record's log (the attempt count goes on past it)
    LOG_MAX = 50

    def __init__(self, client: RedisClient, keys: Keys, scripts: Scripts) -> None:
        self.client: Any = client  # decodes responses (see lua/base.py)
        self.keys = keys
        self.scripts = scripts

    async def register(self, cb: RunCallback, ttl_ms: int) -> None:
        """Store a run's callback (before its input is enqueued: no entry can precede it)."""
        key = self.keys.callback_run(cb.run_id)
        fields = {
            "project": cb.project,
            "session_id": cb.session_id,
            "url": cb.url,
            "events": orjson.dumps(list(cb.events)).decode(),
            "created_ms": cb.created_ms,
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, ttl_ms)
        await pipe.execute()

    async def run_callback(self, run_id: str) -> RunCallback | None:
        raw = await self.client.hgetall(self.keys.callback_run(run_id))
        if not raw:
            return None
        return RunCallback(
            run_id=run_id,
            project=raw.get("project", ""),
            session_id=raw.get("session_id", ""),
            url=raw.get("url", ""),
            events=tuple(orjson.loads(raw.get("events") or "[]")),
            created_ms=int(raw.get("created_ms") or 0),
        )

    async def add(
        self, delivery_id: str, run_id: str, fields: dict[str, str | int], ttl_ms: int
    ) -> bool:
        """Put a delivery in the outbox, due now; False when it is there already."""
        args: list[Any] = [delivery_id, ttl_ms]
        for k, v in fields.items():
            args += [k, v]
        keys = [
            self.keys.callbacks_due,
            self.keys.callback_delivery(delivery_id),
            self.keys.callback_deliveries(run_id),
        ]
        r = as_list(await self.scripts.script("addDelivery")(keys, args))
        _ok("addDelivery", r, E.DUPLICATE)
        return status(r) == E.OK

    async def claim(self, lease_ms: int, limit: int) -> list[Claim]:
        """Claim up to ``limit`` due deliveries for ``lease_ms``."""
        r = as_list(
            await self.scripts.script("claimDeliveries")(
                [self.keys.callbacks_due], [lease_ms, limit]
            )
        )
        _ok("claimDeliveries", r)
        flat = r[2:]
        return [Claim(as_str(flat[i]), as_int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def record(
        self,
        claim: Claim,
        ok: bool,
        status_code: int | None,
        error: str,
        delay_ms: int,
        window_ms: int,
    ) -> Recorded | None:
        """Record an attempt; None when the claim was lost (another worker took it over)."""
        keys = [self.keys.callbacks_due, self.keys.callback_delivery(claim.delivery_id)]
        args: list[Any] = [
            claim.delivery_id,
            claim.claim,
            "ok" if ok else "fail",
            "" if status_code is None else status_code,
            error[:200],
            delay_ms,
            window_ms,
            self.LOG_MAX,
        ]
        r = as_list(await self.scripts.script("recordDelivery")(keys, args))
        if status(r) == E.NOT_FOUND:
            return None
        _ok("recordDelivery", r)
        next_ms = as_int(r[2])
        return Recorded(as_str(r[1]), next_ms or None, as_int(r[3]))

    async def get(self, delivery_id: str) -> Delivery | None:
        return _delivery(await self.client.hgetall(self.keys.callback_delivery(delivery_id)))

    async def forget(self, delivery_id: str) -> None:
        """Drop an id from the due set (its record expired)."""
        await self.client.zrem(self.keys.callbacks_due, delivery_id)

    async def run_deliveries(self, run_id: str) -> list[Delivery]:
        """One run's deliveries, oldest first (records that expired are left out)."""
        ids = await self.client.lrange(self.keys.callback_deliveries(run_id), 0, -1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.callback_delivery(i))
        out = [_delivery(raw) for raw in await pipe.execute()]
        return [d for d in out if d is not None]

    async def depth(self) -> int:
        """Deliveries waiting (pending, claimed or not)."""
        return int(await self.client.zcard(self.keys.callbacks_due))
