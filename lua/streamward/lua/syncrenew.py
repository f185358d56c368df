"""The replica lease renewal on a synchronous client, for the runner's heartbeat thread.

The runner renews its replica lease from a thread of its own, with its own connection, so
a busy event loop cannot starve the heartbeat (docs/runner.md, "Heartbeat thread"). The
call is ``Scripts.renew_replica`` / ``LeaseCalls.renew_replica`` on redis-py's sync client:
the same script, the same ``sw:replicas`` score. Build the client with
``client.connect_sync`` (standalone, Sentinel or Cluster, like the async one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from streamward.lua import errors as E
from streamward.lua import loader
from streamward.lua.keys import Keys
from streamward.lua.loader import script_sources
from streamward.lua.replies import as_int, as_list, as_str, status
from streamward.lua.scripts import _field_args


class SyncReplicaRenewal:
    """``renew()`` = renewReplica-1 + ZADD ``sw:replicas`` on a sync redis-py client."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        # redis-py's sync Script: EVALSHA first, SCRIPT LOAD on NOSCRIPT
        self._script = client.register_script(script_sources()["renewReplica"].source)

    def renew(
        self, replica_id: str, incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None
    ) -> tuple[int, bool]:
        """(Redis time in ms, whether Redis accepts writes), like
        ``LeaseCalls.renew_replica_checked``; raises ReplicaLost."""
        rk = self.keys.replica(replica_id)
        t0 = time.perf_counter()
        ok = False
        try:
            raw = self._script(keys=[rk.lease], args=_field_args(incarnation, ttl_ms, fields))
            ok = True
        finally:
            hook = loader.on_script_timing
            if hook is not None:
                hook("renewReplica", time.perf_counter() - t0, ok)
        r = as_list(raw)
        if status(r) == E.REPLICA_LOST:
            raise E.ReplicaLost(replica_id, as_str(r[1]))
        if status(r) != E.OK:
            raise E.status_error("renewReplica", r)
        now = as_int(r[1])
        try:  # an ordinary write: its refusal says Redis refuses writes (the lease renewed)
            self.client.zadd(self.keys.replicas, {replica_id: now})
        except ResponseError as exc:
            if not E.is_write_refusal(exc):
                raise
            return now, False
        return now, True

    def close(self) -> None:
        self.client.close()
