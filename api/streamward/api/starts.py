"""Detached invoke: learning that a run started without a Redis round trip when we can.

The log is the truth: a detached invoke tails it (XREAD BLOCK) from the position read at
submit until the run's ``run.started``. Two things usually tell this process first, and
``StartWaiters`` hands them to the waiting request in memory: the owner's start notice on
this process's channel (``api/startfeed.py``: published when the owner takes the input, so
it does not wait for the transcript), and this process's own ingest of the run's
``run.started`` (the runner ships it through an API's admin ingest endpoint: with one API
process, or when the ingest lands where the caller waits, this process has just written it).

An invoke that named this process's notice channel waits in memory first, up to
``LOCAL_WAIT_S``, then tails the log: its owner's notice comes here, whichever process
ingests the transcript. That trust is scored too (``notice_share``, starting trusting):
where the owners cannot publish, notified invokes tail the log at once after a few waits.

Without a channel (not subscribed; Cluster), whether to wait in memory first is learnt, not
configured: every wait is later scored by whether its run's start was heard (notice or
ingest) by this process. When (almost) all are (one API process, or runners pointed at this
one), waiters wait in memory first; otherwise (several API processes behind a balancer)
they tail the log at once, and an ingest seen here still ends the wait early. Nothing is
ever missed: the log tail from the submit position always follows.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from streamward.core.contract import RUN_STARTED, Entry
from streamward.lua.work import StartNotice

# how long a trusted in-memory wait lasts before the log tail takes over (a start that
# slow is rare; then the XREAD costs what it always did)
LOCAL_WAIT_S = 0.25
# score a wait this long after it ended (its run's ingest may land after the log tail saw it)
SCORE_AFTER_S = 1.0
TRUST_ABOVE = 0.9  # share of starts ingested here for in-memory waits to go first
EWMA_ALPHA = 1 / 32


def starts_or_ends(entry: Entry) -> bool:
    """A run's first such entry answers a detached invoke: started, or ended before it ran."""
    return entry.type == RUN_STARTED or entry.terminal


@dataclass(slots=True)
class _Wait:
    future: asyncio.Future[Entry]  # the run's first start-or-end entry
    seen_here: bool = False  # its start (or end) was ingested by this process
    notified: bool = False  # its input named this process's notice channel
    noticed: bool = False  # the owner's notice came
    started: bool = False  # the waiter got a start or an end (scored only then)
    ended_at: float | None = None


@dataclass
class StartWaiters:
    """Per process: detached invokes waiting for their run's start, by (session, run id)."""

    local_share: float = 0.0  # EWMA of "the start was heard here"; starts distrustful
    # EWMA of "the notice came" over the waits that named the channel: starts trusting (a
    # fresh process's first invokes), and falls within a few waits where the owners cannot
    # publish (a runner's Redis user without the channel, an older runner mid-upgrade)
    notice_share: float = 1.0
    # this process's start-notice channel while subscribed ("": none; api/startfeed.py)
    channel: str = ""
    _waits: OrderedDict[tuple[str, str], _Wait] = field(default_factory=OrderedDict)

    @property
    def trusted(self) -> bool:
        return self.local_share >= TRUST_ABOVE

    @property
    def notices_trusted(self) -> bool:
        """Notices for the inputs that name this process's channel (nearly) all come."""
        return self.notice_share >= TRUST_ABOVE

    def register(
        self, session_ref: str, run_id: str, *, notified: bool = False
    ) -> asyncio.Future[Entry]:
        """The future of ``run_id``'s start; ``notified``: its input names our channel."""
        self._score_old(time.monotonic())
        key = (session_ref, run_id)
        wait = self._waits.get(key)
        if wait is None or wait.future.done():
            wait = _Wait(asyncio.get_running_loop().create_future(), notified=notified)
            self._waits[key] = wait
        self._waits.move_to_end(key)
        return wait.future

    def done(self, session_ref: str, run_id: str, *, waited: bool) -> None:
        """The waiter is gone; ``waited``: it waited and got a start or an end (only such
        waits are scored: a queued answer or one read from the run state says nothing)."""
        wait = self._waits.get((session_ref, run_id))
        if wait is None:
            return
        wait.started = waited
        wait.ended_at = time.monotonic()

    def ingested(self, session_ref: str, run_id: str, entries: Iterable[Entry]) -> None:
        """Called by the ingest handler once ``entries`` of ``run_id`` are in the log."""
        if not self._waits:
            return
        wait = self._waits.get((session_ref, run_id))
        if wait is None:
            return
        for e in entries:
            if starts_or_ends(e):
                wait.seen_here = True
                if not wait.future.done():
                    wait.future.set_result(e)
                return

    def announced(self, notice: StartNotice) -> None:
        """An owner's notice that it took the input of ``notice.run_id`` to run it."""
        wait = self._waits.get((notice.session_ref, notice.run_id))
        if wait is None:
            return
        wait.seen_here = wait.noticed = True
        if not wait.future.done():
            data = {"replica_id": notice.replica_id}
            entry = Entry(0, RUN_STARTED, data, run_id=notice.run_id, token=notice.token)
            wait.future.set_result(entry)

    def _score_old(self, now: float) -> None:
        """Fold waits that ended ``SCORE_AFTER_S`` ago into the local share; forget them."""
        waits = self._waits
        while waits:
            wait = next(iter(waits.values()))
            # oldest first; one still waiting (a start timeout is seconds) holds the rest
            if wait.ended_at is None or now - wait.ended_at < SCORE_AFTER_S:
                break
            waits.popitem(last=False)
            if wait.started:
                x = 1.0 if wait.seen_here else 0.0
                self.local_share += EWMA_ALPHA * (x - self.local_share)
                if wait.notified:
                    y = 1.0 if wait.noticed else 0.0
                    self.notice_share += EWMA_ALPHA * (y - self.notice_share)
