"""Route definitions and the atomic event-key → session binding (issue: event routing).

``Binding`` (the reply of bindSession-1) lives in lua/replies.py.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys, binding_key, validate_id
from streamward.lua.replies import Binding
from streamward.lua.scripts import Scripts


def key_hash(key: str) -> str:
    """A short stable digest of a session key (keys may hold any characters)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class RouteStore:
    """Routes (one hash of JSON documents) and session bindings."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.scripts = Scripts(client)

    @staticmethod
    def _field(project: str, route_id: str) -> str:
        return f"{validate_id('project', project)}/{validate_id('route_id', route_id)}"

    async def save(self, project: str, route_id: str, doc_json: str) -> bool:
        """Store a route; True when it is new."""
        created = await self.client.hset(self.keys.routes, self._field(project, route_id), doc_json)
        return bool(created)

    async def get(self, project: str, route_id: str) -> str | None:
        raw = await self.client.hget(self.keys.routes, self._field(project, route_id))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    async def delete(self, project: str, route_id: str) -> bool:
        return bool(await self.client.hdel(self.keys.routes, self._field(project, route_id)))

    async def all(self, project: str | None = None) -> list[tuple[str, str, str]]:
        """Every route as (project, route_id, doc_json), optionally of one project."""
        raw = await self.client.hgetall(self.keys.routes)
        out = []
        for field, doc in raw.items():
            f = field.decode() if isinstance(field, bytes) else str(field)
            p, _, r = f.partition("/")
            if project is None or p == project:
                out.append((p, r, doc.decode() if isinstance(doc, bytes) else str(doc)))
        return sorted(out)

    async def bind(
        self,
        project: str,
        route_id: str,
        key: str,
        *,
        session_timeout_ms: int,
        daily_reset_hour: int | None,
        clock_offset_ms: int = 0,
        reset_reason: str = "",
        idle_timeout_ms: int = 0,
        mode: Literal["event", "rotate", "clear"] = "event",
        expected_session_id: str = "",
    ) -> Binding:
        """Atomically pick (or open) the session generation for an event key; ``due`` when
        a reset fell due (the caller checks ``generation_state`` and rotates or joins)."""
        h = key_hash(key)
        return await self.scripts.bind_session(
            binding_key(self.keys, project, route_id, h),
            f"{route_id}.{h}",
            session_timeout_ms=session_timeout_ms,
            daily_reset_hour=daily_reset_hour,
            clock_offset_ms=clock_offset_ms,
            key=key,
            reset_reason=reset_reason,
            idle_timeout_ms=idle_timeout_ms,
            mode=mode,
            expected_session_id=expected_session_id,
        )

    async def generation_state(
        self, sk: SessionKeys, idle_timeout_ms: int = 0, clock_offset_ms: int = 0
    ) -> Literal["busy", "recent", "quiet"]:
        """Whether a generation may be reset now. ``busy``: inputs in its inbox (a running
        input stays there until its run ends, so XLEN 0 alone means no run and nothing
        pending) or an active run; ``recent``: a run wrote within ``idle_timeout_ms`` (an
        idle reset is disproved); else ``quiet``."""
        if int(await self.client.xlen(sk.inbox)) > 0:
            return "busy"
        active, updated = await self.client.hmget(sk.meta, ["active_run_id", "updated_ms"])
        if active:
            return "busy"
        if idle_timeout_ms > 0 and updated:
            secs, micros = await self.client.time()
            now_ms = int(secs) * 1000 + int(micros) // 1000 + clock_offset_ms
            if now_ms - int(updated) < idle_timeout_ms:
                return "recent"
        return "quiet"

    async def mark_reset(self, project: str, route_id: str, key: str, reason: str) -> str | None:
        """Mark a manual reset: the key's next event after its generation is quiet opens a
        new one (a reset never happens under a running run).

        Returns the session id of the generation that ends, or None when the key has none.
        """
        bk = binding_key(self.keys, project, route_id, key_hash(key))
        sid = await self.client.hget(bk, "session_id")
        if sid is None:
            return None
        await self.client.hset(bk, "reset", reason)
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    async def binding(self, project: str, route_id: str, key: str) -> dict[str, str]:
        raw = await self.client.hgetall(binding_key(self.keys, project, route_id, key_hash(key)))
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }
