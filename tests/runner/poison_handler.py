"""A handler for the poison tests, loaded by runner processes
(``--handler tests.runner.poison_handler:handle``).

- ``{"poison": true, "gate_dir": D}``: waits until the file ``D/kill-<attempt>`` exists,
  then kills its own process with SIGKILL (the test decides when each owner goes down);
- ``{"poison_now": true}``: kills its own process at once, before its ``run.started`` can
  reach the log (the owner dies with nothing of the run written);
- ``{"gate": F}``: a slow run that ends when the file ``F`` exists;
- ``{"sleep_s": s}``: a slow run (sleeps on the loop, without blocking it);
- ``{"blob": "..."}``: a large input; yields its size only;
- anything else: the echo handler.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from streamward.runner import RunContext
from streamward.runner.handlers import echo


def _exists(path: str | Path) -> bool:
    """A gate file made by the test process (a stat: cheap enough to poll on the loop)."""
    return Path(path).exists()


async def handle(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    if isinstance(input, dict) and input.get("poison_now"):
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(input, dict) and input.get("poison"):
        gate = Path(input["gate_dir"]) / f"kill-{ctx.attempt}"
        for _ in range(2400):  # polled: the file is made by another process; 2 min at most
            if _exists(gate):
                os.kill(os.getpid(), signal.SIGKILL)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{gate} never appeared")
    if isinstance(input, dict) and "gate" in input:  # a slow run: until the test says so
        for _ in range(2400):
            if _exists(input["gate"]):
                yield {"gated": True}
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{input['gate']} never appeared")
    if isinstance(input, dict) and "sleep_s" in input:
        await asyncio.sleep(float(input["sleep_s"]))
        yield {"slept_s": input["sleep_s"]}
        return
    if isinstance(input, dict) and "blob" in input:
        yield {"bytes": len(input["blob"])}
        return
    async for out in echo(ctx, input):
        yield out
