"""A hypothesis state machine holding the Lua scripts against a small Python model of the
lease protocol: one session, three replicas, tokens, epoch and the fenced log."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from streamward.lua.errors import LeaseHeld, NotOwner, ReplicaLost, SeqGap, StaleToken
from streamward.lua.keys import Keys
from streamward.lua.store import Entry, LeaseStore
from streamward.tools.server import RedisServer

T = TypeVar("T")
REPLICAS = ["r1", "r2", "r3"]
TTL_MS = 600_000  # expiry is modelled by explicit rules, never by the clock
replicas = st.sampled_from(REPLICAS)
token_offsets = st.sampled_from([0, 0, 0, -1, -2, 1])  # relative to the current epoch


@dataclass(frozen=True)
class Holder:
    replica: str
    incarnation: str
    token: int


@dataclass
class Model:
    """What the protocol says the state is."""

    epoch: int = 0
    holder: Holder | None = None
    incarnation: dict[str, str] = field(default_factory=dict)
    alive: dict[str, bool] = field(default_factory=dict)
    log: list[tuple[int, int]] = field(default_factory=list)  # (seq, token) in order
    history: list[Holder] = field(default_factory=list)  # every holder ever

    @property
    def last_seq(self) -> int:
        return len(self.log)


class LeaseMachine(RuleBasedStateMachine):
    redis_url = ""  # set by the test from the redis_server fixture

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client: aioredis.Redis = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        self.run(self.client.flushall())
        self.store = LeaseStore(self.client, Keys("swm"))
        self.session = self.store.keys.session("model", "s")
        self.model = Model()
        self.counter = itertools.count(1)
        self.max_epoch_seen = 0
        for r in REPLICAS:
            self._register(r)

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    def _register(self, replica: str) -> None:
        inc = f"{replica}-i{next(self.counter)}"
        prev = self.model.incarnation.get(replica, "") if self.model.alive.get(replica) else ""
        reg = self.run(self.store.register_replica(replica, inc, 600_000))
        assert reg.previous_incarnation == prev
        self.model.incarnation[replica] = inc
        self.model.alive[replica] = True

    def _token(self, offset: int) -> int:
        return max(0, self.model.epoch + offset)

    def _mint(self, replica: str) -> Holder:
        self.model.epoch += 1
        h = Holder(replica, self.model.incarnation[replica], self.model.epoch)
        self.model.holder = h
        self.model.history.append(h)
        return h

    # -- replica lease -----------------------------------------------------------------

    @rule(replica=replicas)
    def re_register(self, replica: str) -> None:
        """A restart: same replica id, new incarnation."""
        self._register(replica)

    @rule(replica=replicas)
    def lose_replica_lease(self, replica: str) -> None:
        """The replica lease ran out (a paused or partitioned process)."""
        self.run(self.client.delete(self.store.keys.replica(replica).lease))
        self.model.alive[replica] = False

    @rule(replica=replicas)
    def renew_replica(self, replica: str) -> None:
        inc = self.model.incarnation[replica]
        if self.model.alive[replica]:
            self.run(self.store.renew_replica(replica, inc, 600_000))
        else:
            try:
                self.run(self.store.renew_replica(replica, inc, 600_000))
            except ReplicaLost as exc:
                assert exc.current_incarnation == ""
            else:
                raise AssertionError("a lost replica lease was renewed (recreated)")
            assert not self.run(self.store.replica_alive(replica))

    # -- session lease -----------------------------------------------------------------

    @rule(replica=replicas)
    def acquire(self, replica: str) -> None:
        inc = self.model.incarnation[replica]
        h = self.model.holder
        try:
            lease = self.run(self.store.acquire(self.session, replica, inc, TTL_MS))
        except LeaseHeld as exc:
            assert h is not None and (h.replica, h.incarnation) != (replica, inc)
            assert (exc.replica_id, exc.incarnation, exc.token) == (
                h.replica,
                h.incarnation,
                h.token,
            )
            return
        if h is None:
            want = self._mint(replica)
            assert lease.fresh
        else:
            assert (h.replica, h.incarnation) == (replica, inc), "acquired a held lease"
            want = h
            assert not lease.fresh
        assert lease.token == want.token

    @rule(
        replica=replicas,
        which=st.sampled_from(["holder", "holder", "holder-older-token", "previous", "ghost"]),
    )
    def takeover(self, replica: str, which: str) -> None:
        h = self.model.holder
        older = [x for x in self.model.history if x != h]
        if which == "holder" and h is not None:
            expected = h
        elif which == "holder-older-token" and h is not None:
            expected = Holder(h.replica, h.incarnation, h.token - 1)
        elif which == "previous" and older:
            expected = older[-1]
        else:
            expected = Holder("ghost", "g", 0)
        inc = self.model.incarnation[replica]
        try:
            lease = self.run(
                self.store.takeover(
                    self.session,
                    (expected.replica, expected.incarnation, expected.token),
                    replica,
                    inc,
                    TTL_MS,
                )
            )
        except LeaseHeld as exc:
            assert h is not None and h != expected and (h.replica, h.incarnation) != (replica, inc)
            assert (exc.replica_id, exc.incarnation, exc.token) == (
                h.replica,
                h.incarnation,
                h.token,
            )
            return
        if h is not None and (h.replica, h.incarnation) == (replica, inc):
            assert not lease.fresh and lease.token == h.token
        else:
            assert h is None or h == expected, "CAS succeeded against another holder"
            want = self._mint(replica)
            assert lease.fresh and lease.token == want.token

    @rule(replica=replicas, offset=token_offsets)
    def renew(self, replica: str, offset: int) -> None:
        token = self._token(offset)
        inc = self.model.incarnation[replica]
        result = self.run(self.store.renew_many(replica, inc, [(self.session, token)], TTL_MS))
        h = self.model.holder
        if h is None:
            want = "expired"
        elif (h.replica, h.incarnation) != (replica, inc):
            want = "not_owner"
        elif h.token != token:
            want = "stale_token"
        else:
            want = "renewed"
        got = "renewed" if result.renewed else result.lost[0][1]
        assert got == want

    @rule(replica=replicas, offset=token_offsets)
    def release(self, replica: str, offset: int) -> None:
        token = self._token(offset)
        inc = self.model.incarnation[replica]
        h = self.model.holder
        try:
            released = self.run(self.store.release(self.session, replica, inc, token))
        except NotOwner:
            assert h is not None and h != Holder(replica, inc, token)
            return
        if h is None:
            assert released is False
        else:
            assert released is True and h == Holder(replica, inc, token)
            self.model.holder = None  # the epoch stays

    @rule()
    def force_release(self) -> None:
        h = self.model.holder
        out = self.run(self.store.force_release(self.session, "model"))
        if h is None:
            assert (out.old_replica_id, out.old_token) == ("", 0)
        else:
            assert (out.old_replica_id, out.old_incarnation, out.old_token) == (
                h.replica,
                h.incarnation,
                h.token,
            )
        self.model.epoch += 1
        self.model.holder = None
        assert out.new_epoch == self.model.epoch

    @rule()
    def session_lease_expires(self) -> None:
        self.run(self.client.delete(self.session.lease))
        self.model.holder = None

    # -- fenced ingest -------------------------------------------------------------------

    @rule(
        offset=token_offsets,
        shifts=st.lists(st.sampled_from([0, 0, 0, 0, -1, -2, 1]), min_size=0, max_size=4),
    )
    def ingest(self, offset: int, shifts: list[int]) -> None:
        """A batch from last_seq + 1 on, where shifts make duplicates (<0) and gaps (>0)."""
        self._ingest(self._token(offset), shifts)

    @rule(shifts=st.lists(st.sampled_from([0, 0, 0, 0, -1, 1]), min_size=1, max_size=4))
    def ingest_as_holder(self, shifts: list[int]) -> None:
        """The usual writer: whoever holds the lease (stale after a force-release)."""
        h = self.model.holder
        self._ingest(h.token if h is not None else self.model.epoch, shifts)

    def _ingest(self, token: int, shifts: list[int]) -> None:
        last = self.model.last_seq
        seqs = [max(1, last + 1 + i + s) for i, s in enumerate(shifts)]
        batch = [Entry(seq, "run.output", {}) for seq in seqs]
        try:
            out = self.run(self.store.ingest(self.session, "run", token, batch))
        except StaleToken as exc:
            assert token < 1 or token != self.model.epoch
            assert exc.epoch == self.model.epoch
            return
        except SeqGap as exc:
            expect = last
            for seq in seqs:
                if seq > expect + 1:
                    break
                expect = max(expect, seq)
            else:
                raise AssertionError(f"gap reported for {seqs} after {last}") from exc
            assert (exc.last_seq, exc.seq) == (last, seq)
            return
        assert 1 <= token == self.model.epoch, "accepted an ingest without the current epoch"
        accepted = dups = 0
        for seq in seqs:
            if seq <= self.model.last_seq:
                dups += 1
            else:
                assert seq == self.model.last_seq + 1, f"accepted gap {seqs} after {last}"
                self.model.log.append((seq, token))
                accepted += 1
        assert (out.accepted, out.duplicates, out.last_seq) == (
            accepted,
            dups,
            self.model.last_seq,
        )

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def epoch_matches_and_never_decreases(self) -> None:
        c: Any = self.client
        got = int(self.run(c.get(self.session.epoch)) or 0)
        assert got == self.model.epoch
        assert got >= self.max_epoch_seen
        self.max_epoch_seen = got

    @invariant()
    def at_most_one_holder_and_it_is_the_model_one(self) -> None:
        own = self.run(self.store.ownership(self.session))
        h = self.model.holder
        assert own.held == (h is not None)
        if h is not None:
            assert (own.replica_id, own.incarnation, own.token) == (
                h.replica,
                h.incarnation,
                h.token,
            )
            assert own.token is not None and own.token <= own.epoch
            alive = self.model.alive[h.replica] and self.model.incarnation[h.replica] == (
                h.incarnation
            )
            assert own.replica_alive == alive

    @invariant()
    def log_is_exactly_one_to_n_with_accepting_tokens(self) -> None:
        c: Any = self.client  # replies are decoded str; redis-py types them as unions
        stored = self.run(c.xrange(self.session.log))
        assert [str(i) for i, _ in stored] == [f"{n}-0" for n in range(1, len(stored) + 1)]
        got = [(int(f["seq"]), int(f["token"])) for _, f in stored]
        assert got == self.model.log
        # each entry's token was current when written, so tokens never decrease along the log
        tokens = [t for _, t in got]
        assert tokens == sorted(tokens)


@pytest.mark.timeout(120)
def test_scripts_follow_the_protocol_model(redis_server: RedisServer) -> None:
    LeaseMachine.redis_url = redis_server.url
    run_state_machine_as_test(
        LeaseMachine,
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
