"""Work intake: the ``sw:work`` consumer group and XAUTOCLAIM of abandoned entries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from redis.exceptions import RedisError, ResponseError

from streamward.core.backoff import backoff_s
from streamward.lua.errors import InvalidId
from streamward.lua.keys import DEFAULT_TYPE
from streamward.lua.streams import Streams
from streamward.lua.work import WorkItem
from streamward.runner.config import RunnerSettings
from streamward.runner.loop import Loop
from streamward.runner.sessions import SessionBook
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner.intake")

READ_BLOCK_MS = 1000
READ_COUNT = 32


async def take_all(sessions: SessionBook, streams: Streams, items: list[WorkItem]) -> None:
    """Claim the sessions of one read's work entries concurrently.

    A cold burst (many new sessions at once) reads up to READ_COUNT entries; claimed one after
    another, the last session waited for every claim before it (several round trips each).
    Together, their Redis calls share round trips (lua/autopipe.py). Claims of one session
    still run one at a time (``SessionBook.claim`` locks per session). An unexpected error is
    raised once every claim has ended, as the loop would have met it in the first place."""
    if len(items) == 1:
        await take_work(sessions, streams, items[0])
        return
    results = await asyncio.gather(
        *(take_work(sessions, streams, item) for item in items), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    for extra in errors[1:]:  # the first is raised; the others would go unseen
        log.error("claim failed unexpectedly: %r", extra)
    if errors:
        raise errors[0]


async def take_work(sessions: SessionBook, streams: Streams, item: WorkItem) -> None:
    """Claim (or hand back) the session of one work entry, then acknowledge and delete it."""
    try:
        await sessions.claim(item.session_ref, item.reason)
    except InvalidId as exc:
        log.warning("work entry %s names an invalid session: %s", item.id, exc)
    except RedisError as exc:
        # not acknowledged: XAUTOCLAIM hands it to someone after the replica TTL
        log.warning("claim of %s failed: %r", item.session_ref, exc)
        return
    try:
        await streams.ack_work(item.id, session_type=item.session_type)
    except RedisError as exc:
        log.warning("ack of work entry %s failed: %r", item.id, exc)


class WorkIntake(Loop):
    """XREADGROUP on one session type's work stream (``sw:work`` for the default type) while
    under ``max_sessions``; stops when draining starts. One per type the replica serves
    (separate blocking reads: the streams may sit on different Cluster nodes)."""

    name = "work_intake"

    def __init__(
        self,
        state: ReplicaState,
        streams: Streams,
        sessions: SessionBook,
        session_type: str = DEFAULT_TYPE,
    ) -> None:
        super().__init__()
        self.state = state
        self.streams = streams
        self.sessions = sessions
        self.session_type = session_type
        self.name = f"work_intake:{session_type}"

    async def run(self) -> None:
        st = self.state
        failures = 0
        while not st.draining:
            capacity = self.sessions.capacity()
            if st.fenced or capacity <= 0 or st.writes_refused():
                await asyncio.sleep(0.1)  # entries wait in the group: nothing is lost
                continue
            read = asyncio.create_task(
                self.streams.read_work(
                    st.replica_id, min(capacity, READ_COUNT), READ_BLOCK_MS, self.session_type
                )
            )
            stop = asyncio.create_task(st.draining_event.wait())
            try:
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not read.done():
                    # draining: stop claiming now rather than after the blocking read times out
                    read.cancel()
                    with contextlib.suppress(BaseException):
                        await read
            if read.cancelled():
                return
            try:
                items = read.result()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (restart without persistence)
                    with contextlib.suppress(RedisError):
                        await self.streams.ensure_work_group(self.session_type)
                    continue
                # any other error reply (e.g. READONLY during a Sentinel failover) is an
                # outage like a lost connection: back off, warn now and then
                failures = await self._failed(failures, exc)
                continue
            except (RedisError, OSError) as exc:
                failures = await self._failed(failures, exc)
                continue
            failures = 0
            await take_all(self.sessions, self.streams, items)

    @staticmethod
    async def _failed(failures: int, exc: Exception) -> int:
        failures += 1
        if failures == 1 or failures % 20 == 0:
            log.warning("work read failed (%d in a row): %r", failures, exc)
        await asyncio.sleep(backoff_s(failures))
        return failures


class WorkReclaimer(Loop):
    """Reclaim work entries left unacknowledged by consumers that died (XAUTOCLAIM)."""

    name = "work_autoclaim"

    def __init__(
        self,
        state: ReplicaState,
        settings: RunnerSettings,
        streams: Streams,
        sessions: SessionBook,
        session_type: str = DEFAULT_TYPE,
    ) -> None:
        super().__init__()
        self.state = state
        self.settings = settings
        self.streams = streams
        self.sessions = sessions
        self.session_type = session_type
        self.name = f"work_autoclaim:{session_type}"

    async def run(self) -> None:
        st = self.state
        ttl_ms = self.settings.replica_ttl_ms
        while not st.draining:
            await asyncio.sleep(ttl_ms / 2000 * random.uniform(0.8, 1.2))
            capacity = self.sessions.capacity()
            if st.fenced or st.draining or capacity <= 0 or st.writes_refused():
                continue
            try:
                items = await self.streams.autoclaim_work(
                    st.replica_id, ttl_ms, min(capacity, READ_COUNT), self.session_type
                )
            except RedisError as exc:
                log.debug("autoclaim failed: %r", exc)
                continue
            for item in items:
                log.info("reclaimed work entry %s for %s", item.id, item.session_ref)
            await take_all(self.sessions, self.streams, items)
