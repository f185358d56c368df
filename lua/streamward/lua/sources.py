"""Event sources (one hash of JSON documents) and the per-delivery dedupe claims.

A delivery is claimed with ``SET NX`` before anything is delivered and the claim is
replaced by the stored answer afterwards (``SET XX``, kept 24 h), so two concurrent copies
of one delivery never both deliver: the second sees the claim (in flight) or the answer.
The claim alone lives ``CLAIM_TTL_MS``: an API that died mid-delivery does not block the
sender's retries for a day.
"""

from __future__ import annotations

import hashlib

from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, delivery_key, validate_id

IN_FLIGHT = ""  # the claim's value until the first copy stored its answer
DEDUPE_TTL_MS = 24 * 3600 * 1000
CLAIM_TTL_MS = 120_000  # far longer than a delivery takes


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class SourceStore:
    """Source configurations (with their secrets) and delivery claims."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    @staticmethod
    def _field(project: str, source: str) -> str:
        return f"{validate_id('project', project)}/{validate_id('source', source)}"

    async def save(self, project: str, source: str, doc_json: str) -> bool:
        """Store a source; True when it is new."""
        created = await self.client.hset(self.keys.sources, self._field(project, source), doc_json)
        return bool(created)

    async def get(self, project: str, source: str) -> str | None:
        raw = await self.client.hget(self.keys.sources, self._field(project, source))
        return None if raw is None else _text(raw)

    async def delete(self, project: str, source: str) -> bool:
        return bool(await self.client.hdel(self.keys.sources, self._field(project, source)))

    async def all(self, project: str | None = None) -> list[tuple[str, str, str]]:
        """Every source as (project, source, doc_json), optionally of one project."""
        raw = await self.client.hgetall(self.keys.sources)
        out = []
        for field, doc in raw.items():
            p, _, s = _text(field).partition("/")
            if project is None or p == project:
                out.append((p, s, _text(doc)))
        return sorted(out)

    def _delivery(self, project: str, source: str, delivery_id: str) -> str:
        # delivery ids are the sender's text: hashed, so any characters make a key
        h = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
        return delivery_key(self.keys, project, source, h)

    async def claim(
        self, project: str, source: str, delivery_id: str, ttl_ms: int = CLAIM_TTL_MS
    ) -> str | None:
        """Claim a delivery: None when this call owns it, else what is stored
        (``IN_FLIGHT`` while the first copy is delivering, then its answer's JSON)."""
        key = self._delivery(project, source, delivery_id)
        if await self.client.set(key, IN_FLIGHT, nx=True, px=ttl_ms):
            return None
        raw = await self.client.get(key)
        # expired between the two calls: claim again (one retry is enough at 24 h windows)
        if raw is None:
            return None if await self.client.set(key, IN_FLIGHT, nx=True, px=ttl_ms) else ""
        return _text(raw)

    async def answer(
        self,
        project: str,
        source: str,
        delivery_id: str,
        answer_json: str,
        ttl_ms: int = DEDUPE_TTL_MS,
    ) -> None:
        """Replace the claim by the first answer, kept for the dedupe window."""
        key = self._delivery(project, source, delivery_id)
        await self.client.set(key, answer_json, px=ttl_ms)

    async def release(self, project: str, source: str, delivery_id: str) -> None:
        """Drop a claim whose delivery failed before anything was delivered: a retry may run."""
        await self.client.delete(self._delivery(project, source, delivery_id))
