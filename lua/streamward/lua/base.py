"""Shared base of the ``Streams`` call groups (lua/work.py, inbox.py, indexes.py, streams.py)."""

from __future__ import annotations

from typing import Any

from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys


def as_text(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class StreamsBase:
    """One client and key schema; every group of ``Streams`` calls builds on it."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        # The client always decodes responses; redis-py types replies as unions of
        # bytes/str/None for both modes, so replies are read through Any here.
        self.client: Any = client
        self.keys = keys or Keys()

    async def now_ms(self) -> int:
        """Redis server time in ms (streamward never trusts local wall clocks for leases)."""
        sec, usec = await self.client.time()
        return int(sec) * 1000 + int(usec) // 1000
