"""A supervised background loop with a ``start()`` / idempotent ``stop()`` lifecycle."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod

from streamward.core.tasks import cancel_until_done

log = logging.getLogger("streamward.runner")

RESTART_DELAY_S = 1.0


class Loop(ABC):
    """Subclasses implement ``run()``; ``start()`` keeps it running, ``stop()`` ends it.

    A crash in one tick is logged and the loop restarted after ``RESTART_DELAY_S``: a bug
    must not silently stop the heartbeat.
    """

    name = "loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def run(self) -> None: ...

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended; safe to call more than once."""
        task = self._task
        if task is None:
            return
        # again until it ends: a cancel landing in a redis-py write can be lost (core/tasks.py)
        await cancel_until_done(task)

    async def _supervise(self) -> None:
        while True:
            try:
                await self.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting it", self.name)
                await asyncio.sleep(RESTART_DELAY_S)
