"""The replica lease: registering an incarnation, the self-fencing deadline, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from streamward.core.metrics import version
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.runner.config import RunnerSettings
from streamward.runner.metrics import Metrics
from streamward.runner.sessions import SessionBook
from streamward.runner.state import ReplicaState

log = logging.getLogger("streamward.runner")


class ReplicaLease:
    """Owns ``state.incarnation``, ``state.fenced`` and ``state.deadline``.

    ``on_registered`` runs once a new incarnation is registered (the mailbox starts reading
    its fresh mail stream from the beginning).
    """

    def __init__(
        self,
        state: ReplicaState,
        settings: RunnerSettings,
        store: LeaseStore,
        streams: Streams,
        metrics: Metrics,
        sessions: SessionBook,
        on_registered: Callable[[], None],
    ) -> None:
        self.state = state
        self.settings = settings
        self.store = store
        self.streams = streams
        self.metrics = metrics
        self.sessions = sessions
        self.on_registered = on_registered
        self._fence_timer: asyncio.TimerHandle | None = None

    async def register(self) -> None:
        """Register a fresh incarnation; re-queue what earlier incarnations held."""
        s, st = self.settings, self.state
        refs = set(self.sessions.orphans) | set(await self.streams.replica_sessions(st.replica_id))
        incarnation = secrets.token_hex(8)
        sent = time.monotonic()
        reg = await self.store.register_replica(
            st.replica_id, incarnation, s.replica_ttl_ms, self.register_fields()
        )
        st.incarnation = incarnation
        self.renewed(sent)
        self._arm_fence_timer()
        # the old incarnation is dead now: its leases are open to takeover by anyone
        await self.streams.publish_work_many(sorted(refs), "owner_death")
        await self.streams.forget_replica(st.replica_id)  # old index and old mail
        await self.renew()  # back into sw:replicas (forget_replica removed it)
        self.on_registered()
        self.sessions.orphans.clear()
        st.fenced = False
        log.info(
            "registered incarnation %s (previous %s); re-queued %d sessions it held before",
            incarnation, reg.previous_incarnation or "-", len(refs),
        )  # fmt: skip

    async def renew(self) -> bool:
        """One ``renewReplica`` call with the current status fields (raises ReplicaLost);
        returns whether Redis accepts other writes (a full Redis still renews the lease)."""
        st = self.state
        _, accepted = await self.store.renew_replica_checked(
            st.replica_id,
            st.incarnation,
            self.settings.replica_ttl_ms,
            self.sessions.status_fields(),
        )
        return accepted

    def note_writes(self, accepted: bool, why: object = "") -> None:
        """Log and count the turns between "Redis accepts writes" and "refuses writes"."""
        if not self.state.note_writes(accepted):
            return
        self.metrics.writes_refused.set(0 if accepted else 1)
        if accepted:
            log.warning("redis accepts writes again: claiming and starting runs again")
        else:
            log.error(
                "redis refuses writes (%s): keeping every session, claiming and starting "
                "nothing new until it accepts writes again (an answer, not a partition)",
                why or "write refused",
            )

    def renewed(self, sent: float) -> None:
        """A renew sent at monotonic time ``sent`` succeeded: push the self-fencing deadline.

        Called from the heartbeat thread too: it only assigns the deadline (one float); the
        timer on the loop reads it when it fires.
        """
        self.metrics.heartbeat_last_success.set_to_current_time()
        s = self.settings
        # the lease expires ttl after Redis got the call, which is after we sent it
        self.state.deadline = sent + (s.replica_ttl_ms - s.fence_margin_ms) / 1000
        with contextlib.suppress(OSError):
            s.heartbeat_file_path.touch()

    def _arm_fence_timer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        delay = max(0.0, self.state.deadline - time.monotonic())
        self._fence_timer = loop.call_later(delay, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._fence_timer = None
        if self.state.fenced:
            return  # the next registration arms it again
        if time.monotonic() >= self.state.deadline:
            self.fence("replica lease not renewed before its deadline")
        else:
            # renewed meanwhile (or the timer fired a hair early): wait for the new deadline
            self._arm_fence_timer()

    def fence(self, why: str) -> None:
        """Stop every run at once; nothing is written until a new incarnation registers."""
        log.error("self-fencing: %s", why)
        self._drop_all(why)

    def lose_everything(self, why: str) -> None:
        """The replica lease is gone: drop every session and re-register."""
        log.error("%s: dropping every session", why)
        self._drop_all(why)

    def _drop_all(self, why: str) -> None:
        self.state.fenced = True
        self.metrics.fenced.inc()
        self.sessions.drop_all(why)

    def stop_timer(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()

    async def unregister(self, clean: bool) -> None:
        """Delete the replica lease; forget the replica when nothing is left in its index."""
        rid = self.state.replica_id
        try:
            await self.streams.delete_replica_lease(rid, self.state.incarnation)
            if clean and not await self.streams.replica_sessions(rid):
                await self.streams.forget_replica(rid)
        except (RedisError, OSError) as exc:
            log.warning("could not delete the replica lease: %r", exc)

    def register_fields(self) -> dict[str, str]:
        return {
            "host": socket.gethostname(),
            "pod": os.environ.get("POD_NAME", ""),
            "pid": str(os.getpid()),
            "version": version(),
            "capacity": str(self.settings.max_sessions),
            "handler": self.settings.handler,
            "types": ",".join(self.sessions.types),  # /admin/replicas, liveness, the sweep
        }
