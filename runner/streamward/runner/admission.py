"""Admission at ``max_sessions``: idle sessions give way to waiting work.

A session that has finished its run and waits out ``close_delay`` holds a slot but does
no work. Capacity therefore counts busy sessions only, and admitting work when full
passivates the longest-idle session first (reason ``idle``). Only sessions with no run,
no runnable input and no pending wake are ever evicted: one whose input arrives while
its eviction is on the way keeps running, and the admission picks another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol


class IdleSlot:
    """One actor's idleness: ``since`` is set while it waits out ``close_delay`` with
    nothing to do; ``evict`` asks it to leave, and the future says whether it did."""

    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake  # the actor's wake flag: setting it ends the idle wait
        self.since: float | None = None  # loop time the idleness began, None while busy
        self._eviction: asyncio.Future[bool] | None = None

    @property
    def requested(self) -> bool:
        return self._eviction is not None

    def evict(self) -> asyncio.Future[bool] | None:
        """Ask an idle actor to passivate; None when it is not idle."""
        if self._eviction is not None:
            return self._eviction  # already on its way out: wait for the same outcome
        if self.since is None or self._wake.is_set():
            return None  # busy, or a wake (an input) is already waiting for it
        self._eviction = asyncio.get_running_loop().create_future()
        self._wake.set()
        return self._eviction

    def keep(self) -> None:
        """Input arrived: the eviction is off (the admitting claim picks another)."""
        self._settle(False)

    def gone(self) -> None:
        """The actor has ended and its slot is free."""
        self._settle(True)

    def _settle(self, left: bool) -> None:
        if self._eviction is not None:
            if not self._eviction.done():
                self._eviction.set_result(left)
            self._eviction = None


class Evictable(Protocol):
    ref: str
    closing: bool
    idle: IdleSlot


def longest_idle(actors: Iterable[Evictable]) -> Evictable | None:
    """The idle actor idle the longest (None when every actor is busy)."""
    idle = [a for a in actors if a.idle.since is not None and not a.closing]
    return min(idle, key=lambda a: a.idle.since or 0.0, default=None)


def busy_count(actors: Iterable[Evictable]) -> int:
    return sum(1 for a in actors if a.idle.since is None or a.closing)


async def make_room(
    actors: Callable[[], Iterable[Evictable]],
    used: Callable[[], int],
    max_sessions: int,
    on_evicted: Callable[[Evictable], None],
) -> bool:
    """Until ``used() < max_sessions``, passivate the longest-idle actor and wait for it to
    leave; False when every session is busy (the caller hands the work back)."""
    while used() >= max_sessions:
        victim = longest_idle(actors())
        if victim is None:
            return False
        fresh = not victim.idle.requested  # else another claim evicts it: count it once
        outcome = victim.idle.evict()
        if outcome is None:
            await asyncio.sleep(0)  # its wake is pending: it is busy now, look again
            continue
        if await asyncio.shield(outcome) and fresh:  # False: input came, it stays
            on_evicted(victim)
    return True
