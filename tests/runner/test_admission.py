"""Admission at max_sessions: the idle-slot rules (pure asyncio: no Redis, no timing)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from streamward.runner.admission import IdleSlot, busy_count, longest_idle, make_room


@dataclass
class FakeActor:
    """An actor as admission sees it: leaves when evicted, stays when input came."""

    ref: str
    closing: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: IdleSlot = field(init=False)

    def __post_init__(self) -> None:
        self.idle = IdleSlot(self.wake)


async def test_an_idle_slot_is_evicted_only_while_idle_and_not_woken() -> None:
    a = FakeActor("a")
    assert a.idle.evict() is None  # busy: never evicted
    a.idle.since = 1.0
    a.wake.set()
    assert a.idle.evict() is None  # an input's wake is pending: it is about to be busy
    a.wake.clear()
    outcome = a.idle.evict()
    assert outcome is not None and a.wake.is_set() and a.idle.requested
    assert a.idle.evict() is outcome  # a second admission waits for the same outcome
    a.idle.keep()  # input arrived before it left: it stays
    assert outcome.result() is False and not a.idle.requested


async def test_make_room_evicts_the_longest_idle_and_never_a_busy_one() -> None:
    actors = {r: FakeActor(r) for r in ("busy", "new-idle", "old-idle")}
    actors["new-idle"].idle.since = 20.0
    actors["old-idle"].idle.since = 10.0
    assert busy_count(actors.values()) == 1
    assert longest_idle(actors.values()) is actors["old-idle"]

    async def leave_when_asked(a: FakeActor) -> None:
        await a.wake.wait()
        a.idle.since = None
        del actors[a.ref]
        a.idle.gone()

    tasks = [asyncio.create_task(leave_when_asked(a)) for a in list(actors.values())[1:]]
    evicted: list[str] = []
    assert await make_room(actors.values, lambda: len(actors), 3, lambda a: evicted.append(a.ref))
    assert set(actors) == {"busy", "new-idle"}  # one room made: the oldest idle left
    assert await make_room(actors.values, lambda: len(actors), 2, lambda a: evicted.append(a.ref))
    assert set(actors) == {"busy"} and evicted == ["old-idle", "new-idle"]
    assert not await make_room(actors.values, lambda: len(actors), 1, print)  # all busy: hand back
    assert set(actors) == {"busy"} and not actors["busy"].wake.is_set()
    await asyncio.gather(*tasks)


async def test_an_eviction_declined_by_input_moves_on_to_the_next_idle() -> None:
    actors = {r: FakeActor(r) for r in ("first", "second")}
    actors["first"].idle.since = 1.0
    actors["second"].idle.since = 2.0

    async def first_gets_input() -> None:
        a = actors["first"]
        await a.wake.wait()
        a.idle.keep()  # the input's wake: it runs, it is busy
        a.idle.since = None

    async def second_leaves() -> None:
        a = actors["second"]
        await a.wake.wait()
        a.idle.since = None
        del actors[a.ref]
        a.idle.gone()

    tasks = [asyncio.create_task(first_gets_input()), asyncio.create_task(second_leaves())]
    evicted: list[str] = []
    assert await make_room(actors.values, lambda: len(actors), 2, lambda a: evicted.append(a.ref))
    assert set(actors) == {"first"} and evicted == ["second"]
    await asyncio.gather(*tasks)
