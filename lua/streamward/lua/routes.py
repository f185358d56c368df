"""Route definitions and the atomic event-key → session binding (issue: event routing).

``Binding`` (the reply of bindSession-1) lives in lua/replies.py.
"""

from __future__ import annotations

import hashlib

from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, binding_key, validate_id
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
    ) -> Binding:
        """Atomically pick (or open) the session generation for an event key."""
        h = key_hash(key)
        return await self.scripts.bind_session(
            binding_key(self.keys, project, route_id, h),
            f"{route_id}.{h}",
            session_timeout_ms=session_timeout_ms,
            daily_reset_hour=daily_reset_hour,
            clock_offset_ms=clock_offset_ms,
            key=key,
            reset_reason=reset_reason,
        )

    async def mark_reset(self, project: str, route_id: str, key: str, reason: str) -> str | None:
        """Expire the key's current generation: its next event opens a new one.

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
