"""The replica heartbeat thread: its stall bound, fencing and lost-lease rules.

``renew_once(now)`` is one heartbeat at a given monotonic time, so the stall bound is
tested without sleeping: the loop's last tick is read back and ``now`` placed around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streamward.lua.errors import ReplicaLost
from streamward.runner.config import RunnerSettings
from streamward.runner.heartbeat import ReplicaHeartbeat
from streamward.runner.lease import ReplicaLease
from streamward.runner.state import ReplicaState


class FakeRenewer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, dict[str, str]]] = []
        self.fail: Exception | None = None

    def renew(
        self, replica_id: str, incarnation: str, ttl_ms: int, fields: Mapping[str, str] | None
    ) -> tuple[int, bool]:
        if self.fail is not None:
            raise self.fail
        self.calls.append((replica_id, incarnation, ttl_ms, dict(fields or {})))
        return 1, True

    def close(self) -> None:
        pass


class FakeSessions:
    def status_fields(self) -> dict[str, str]:
        return {"leases": "2", "inflight": "1"}


class FakeLease:
    def __init__(self) -> None:
        self.sessions = FakeSessions()
        self.renewed_at: list[float] = []
        self.lost: list[str] = []

    def renewed(self, sent: float) -> None:
        self.renewed_at.append(sent)

    def note_writes(self, accepted: bool, why: object = "") -> None:
        pass

    def lose_everything(self, why: str) -> None:
        self.lost.append(why)


def _heartbeat(**env: Any) -> tuple[ReplicaHeartbeat, FakeRenewer, FakeLease, ReplicaState]:
    settings = RunnerSettings(replica_id="r1", replica_ttl_ms=1000, **env)
    state = ReplicaState("r1", incarnation="inc-1", fenced=False)
    renewer, lease = FakeRenewer(), FakeLease()
    hb = ReplicaHeartbeat(state, settings, cast(ReplicaLease, lease), renewer)
    return hb, renewer, lease, state


def _last_tick(hb: ReplicaHeartbeat) -> float:
    hb.tick()
    return hb._progress[0]


def test_the_default_stall_bound_is_three_replica_ttls_and_never_below_two_ticks() -> None:
    assert RunnerSettings(replica_id="r1", replica_ttl_ms=5000).loop_stall_ms == 15_000
    assert RunnerSettings(replica_id="r1", max_loop_stall_ms=9000).loop_stall_ms == 9000
    # a bound shorter than two ticks of the loop would withhold renewals from a healthy loop
    tiny = RunnerSettings(replica_id="r1", replica_ttl_ms=4000, max_loop_stall_ms=100)
    assert tiny.loop_stall_ms == 2 * tiny.replica_renew_ms == 2000


def test_renews_while_the_loop_ticked_within_the_bound() -> None:
    hb, renewer, lease, _ = _heartbeat(max_loop_stall_ms=3000)
    ticked = _last_tick(hb)
    # a stall of a few seconds (a GC pause, a big parse) is below the bound: still renewed
    assert hb.renew_once(ticked + 2.999)
    assert renewer.calls == [("r1", "inc-1", 1000, {"leases": "2", "inflight": "1"})]
    assert lease.renewed_at == [ticked + 2.999]  # the deadline counts from the send time
    assert not hb.stalled


def test_withholds_renewals_once_the_loop_is_stalled_past_the_bound_and_resumes() -> None:
    hb, renewer, lease, _ = _heartbeat(max_loop_stall_ms=3000)
    ticked = _last_tick(hb)
    assert not hb.renew_once(ticked + 3.001)
    assert not hb.renew_once(ticked + 60)
    assert renewer.calls == [] and lease.renewed_at == []
    assert hb.stalled
    # the loop runs again: the next tick lets the thread renew
    ticked = _last_tick(hb)
    assert hb.renew_once(ticked + 0.5)
    assert len(renewer.calls) == 1 and not hb.stalled


def test_never_renews_while_fenced_or_unregistered() -> None:
    hb, renewer, _, state = _heartbeat()
    ticked = _last_tick(hb)
    state.fenced = True
    assert not hb.renew_once(ticked)
    state.fenced, state.incarnation = False, ""
    assert not hb.renew_once(ticked)
    assert renewer.calls == []


def test_a_failed_renewal_does_not_push_the_deadline() -> None:
    hb, renewer, lease, _ = _heartbeat()
    renewer.fail = RedisConnectionError("down")
    ticked = _last_tick(hb)
    assert not hb.renew_once(ticked)
    assert not hb.renew_once(ticked)
    assert hb.failures == 2 and lease.renewed_at == []
    renewer.fail = None
    assert hb.renew_once(ticked)
    assert hb.failures == 0 and lease.renewed_at == [ticked]


async def test_a_lost_lease_drops_everything_on_the_loop_and_stops_renewing_it() -> None:
    hb, renewer, lease, state = _heartbeat()
    hb._loop = asyncio.get_running_loop()
    renewer.fail = ReplicaLost("r1", "inc-2")
    ticked = _last_tick(hb)
    assert not await asyncio.to_thread(hb.renew_once, ticked)
    await asyncio.sleep(0)  # the thread posted the loss to the loop
    for _ in range(100):
        if lease.lost:
            break
        await asyncio.sleep(0.01)
    assert len(lease.lost) == 1 and "inc-2" in lease.lost[0]
    renewer.fail = None
    assert not hb.renew_once(ticked)  # that incarnation is never renewed again
    state.incarnation = "inc-3"  # re-registered
    assert hb.renew_once(ticked)


async def test_a_loss_reported_for_an_older_incarnation_is_ignored() -> None:
    hb, _, lease, state = _heartbeat()
    state.incarnation = "inc-2"  # re-registered before the thread's report arrived
    hb._lost_on_loop("inc-1", "replica lease lost")
    assert lease.lost == []
    state.fenced = True
    hb._lost_on_loop("inc-2", "replica lease lost")
    assert lease.lost == []


@pytest.mark.parametrize("bound_ms", [2000, 10_000])
def test_the_bound_is_the_setting(bound_ms: int) -> None:
    hb, _, _, _ = _heartbeat(max_loop_stall_ms=bound_ms)
    ticked = _last_tick(hb)
    assert hb.renew_once(ticked + bound_ms / 1000 - 0.01)
    assert not hb.renew_once(ticked + bound_ms / 1000 + 0.01)
