"""Stopping a task that may lose a cancel.

On Python 3.11 ``asyncio.wait_for`` returns its inner result when a cancel lands in the step
in which that inner awaitable completes, and the cancel is gone (cpython#86296, fixed in
3.12). redis-py wraps every command write in ``wait_for`` (``socket_timeout``), so a task
cancelled while it talks to Redis can carry on, and a loop would then run for ever. The
stop paths therefore cancel again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

# how often a cancel is repeated while the task still runs
RECANCEL_S = 0.05


async def cancel_until_done(task: asyncio.Task[Any], timeout_s: float | None = None) -> bool:
    """Cancel ``task`` (again every ``RECANCEL_S``) until it ends, or ``timeout_s`` passes;
    True when it has ended. Never raises the task's own error or cancellation."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while not task.done():
        left = RECANCEL_S if deadline is None else min(RECANCEL_S, deadline - loop.time())
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=left)
    return True
