"""``QuotaCalls``: a project's quota keys (``sw:quota:{P}:*``): the invokes-per-second token
bucket and the live-sessions count, through ``admitInvoke-2``.

The typed calls of ``admitInvoke-2`` live here rather than in ``scripts.py`` (that module is
at its size limit); they use its loaded script like every other facade.

"Live sessions" of a project: sessions counted by the admission when created (or revived)
under a live-sessions limit, and not deleted or retired since (``Indexes.retire_session``
forgets them). ``live_sessions`` is the one method every reader goes through, so it can be
pointed at the per-project session index later.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.client import RedisClient
from streamward.lua.keys import Keys, SessionKeys
from streamward.lua.loader import ArgT
from streamward.lua.replies import Admission, as_list, as_str, ok_reply, parse_admission
from streamward.lua.scripts import Scripts


@dataclass(frozen=True, slots=True)
class BucketState:
    """A project's token bucket as read now (refilled to now, not written)."""

    tokens: float  # burst when the bucket is full (or was never used)
    rate_per_s: float
    burst: int


class QuotaCalls(StreamsBase):
    """A project's quota state: admit (take), refund, count, read."""

    def __init__(self, client: RedisClient, keys: Keys, scripts: Scripts) -> None:
        super().__init__(client, keys)
        self._script = scripts.script("admitInvoke")

    async def admit(
        self,
        session: SessionKeys,
        *,
        rate_per_s: float,
        burst: int,
        max_live: int,
        now_ms: int | None = None,
    ) -> Admission:
        """Take a token from the project's bucket (``rate_per_s`` 0 = none) and count the
        session as live when there is room (``max_live`` 0 = no limit). Raises RateLimited:
        nothing written then. ``now_ms`` replaces Redis time (tests)."""
        qk = self.keys.quota(session.project)
        args: list[ArgT] = ["take", repr(float(rate_per_s)), burst, max_live, session.ref]
        args.append("" if now_ms is None else now_ms)
        return parse_admission(await self._script([qk.bucket, qk.live], args))

    async def refund(
        self, project: str, *, rate_per_s: float, burst: int, now_ms: int | None = None
    ) -> float | None:
        """Give back the token of an invoke whose enqueue was refused (or appended nothing);
        the tokens now, None without a rate limit."""
        qk = self.keys.quota(project)
        args: list[ArgT] = ["refund", repr(float(rate_per_s)), burst, 0, ""]
        args.append("" if now_ms is None else now_ms)
        r = ok_reply("admitInvoke", as_list(await self._script([qk.bucket, qk.live], args)))
        tokens = float(as_str(r[1]))
        return None if tokens < 0 else tokens

    async def count_live(self, session: SessionKeys, now_ms: int) -> None:
        """Count a session an enqueue just created or revived (NX: a reservation stays)."""
        await self.client.zadd(
            self.keys.quota(session.project).live, {session.ref: now_ms}, nx=True
        )

    async def live_sessions(self, project: str) -> int:
        """Live sessions of ``project``: the one place the count is read."""
        return int(await self.client.zcard(self.keys.quota(project).live))

    async def bucket(self, project: str, rate_per_s: float, burst: int) -> BucketState:
        """The bucket refilled to Redis's now (read only)."""
        qk = self.keys.quota(project)
        tokens_raw, ts_raw = await self.client.hmget(qk.bucket, "tokens", "ts_ms")
        if tokens_raw is None or rate_per_s <= 0:
            return BucketState(float(burst), rate_per_s, burst)
        elapsed_ms = max(0, await self.now_ms() - int(float(_s(ts_raw))))
        tokens = min(float(burst), float(_s(tokens_raw)) + elapsed_ms * rate_per_s / 1000)
        return BucketState(tokens, rate_per_s, burst)
