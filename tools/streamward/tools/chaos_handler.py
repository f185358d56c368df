"""The chaos fleet's handler: ``echo``, except that a poison input kills its own process.

The runners of ``streamward chaos`` load it by name (``STREAMWARD_HANDLER=
streamward.tools.chaos_handler:handler``), so no runner module imports it. An input with
``"poison": true`` SIGKILLs the runner that runs it, every time it runs: the poison-pill case
of issue 13 (the input that takes down every owner it meets). Anything else is ``echo``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from streamward.runner.context import RunContext
from streamward.runner.handlers import echo

POISON_FIELD = "poison"


async def handler(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    """``echo``, or a SIGKILL of this process for a poison input."""
    if isinstance(input, dict) and input.get(POISON_FIELD) is True:
        os.kill(os.getpid(), signal.SIGKILL)
    async for out in echo(ctx, input):
        yield out
