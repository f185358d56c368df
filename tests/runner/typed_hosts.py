"""Two trivial typed handlers for the session-type tests (loaded by real runner processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streamward.runner import RunContext


async def alpha(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    await asyncio.sleep(float(input.get("delay_s", 0)) if isinstance(input, dict) else 0)
    yield {"host": "alpha"}


async def beta(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    await asyncio.sleep(float(input.get("delay_s", 0)) if isinstance(input, dict) else 0)
    yield {"host": "beta"}


def not_a_generator(ctx: RunContext, input: Any) -> list[Any]:
    return [input]
