"""``cancel_until_done`` (core/tasks.py) and the loops that stop with it: a task whose first
cancel is lost, as Python 3.11's ``asyncio.wait_for`` loses one inside a redis-py write."""

from __future__ import annotations

import asyncio

from streamward.core.tasks import cancel_until_done
from streamward.runner.loop import Loop


async def _loses_first_cancels(lost: int | list[int], log: list[str]) -> None:
    """Runs until cancelled, but carries on after its first ``lost`` cancels (a one-item
    list: the test may lower it while the task runs)."""
    budget = lost if isinstance(lost, list) else [lost]
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if budget[0] <= 0:
                log.append("ended")
                raise
            budget[0] -= 1
            log.append("lost a cancel")
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_lost_cancel_is_repeated_until_the_task_ends() -> None:
    log: list[str] = []
    task = asyncio.create_task(_loses_first_cancels(2, log))
    await asyncio.sleep(0)
    assert await cancel_until_done(task, timeout_s=5) is True
    assert task.cancelled() and log == ["lost a cancel", "lost a cancel", "ended"]


async def test_one_cancel_alone_would_leave_such_a_task_running() -> None:
    # what the helper is for: a single cancel, then a wait, and the task still runs
    log: list[str] = []
    task = asyncio.create_task(_loses_first_cancels(1, log))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done and log == ["lost a cancel"]
    assert await cancel_until_done(task) is True


async def test_a_task_that_never_ends_is_given_up_after_the_timeout() -> None:
    log: list[str] = []
    budget = [10**9]
    task = asyncio.create_task(_loses_first_cancels(budget, log))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await cancel_until_done(task, timeout_s=0.2) is False
    assert 0.15 <= loop.time() - t0 < 1.0 and not task.done() and len(log) >= 2
    budget[0] = 0  # now it may end
    assert await cancel_until_done(task, timeout_s=5) is True


async def test_a_finished_task_is_left_alone() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    assert await cancel_until_done(task, timeout_s=0) is True
    assert not task.cancelled()


class _Stubborn(Loop):
    name = "stubborn"

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    async def run(self) -> None:
        await _loses_first_cancels(1, self.log)


async def test_a_loop_stops_though_its_first_cancel_is_lost() -> None:
    loop = _Stubborn()
    loop.start()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(loop.stop(), timeout=5)
    assert loop.log == ["lost a cancel", "ended"]
