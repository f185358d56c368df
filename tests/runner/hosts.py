"""Session hosts the multi-process tests load with ``--handler tests.runner.hosts:...``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streamward.runner import RunContext, Session, SessionContext


class Counter(Session):
    """Counts inputs across owners through ``save_state``; every output says how this
    activation began and what state it found."""

    async def activate(self, ctx: SessionContext) -> None:
        self.reason = ctx.reason
        self.found = ctx.state
        self.count = int((ctx.state or {}).get("count", 0))

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        self.count += 1
        await ctx.save_state({"count": self.count})
        yield {"count": self.count, "reason": self.reason, "found": self.found}


class HookLog(Session):
    """Records every hook in Redis (list ``test:hooks:<session id>``) so a test can watch a
    runner process's activations and passivations; ``{"sleep_s": x}`` runs that long."""

    async def _note(self, ctx: SessionContext, what: str) -> None:
        await ctx.streams.client.rpush(f"test:hooks:{ctx.session_id}", what)

    async def activate(self, ctx: SessionContext) -> None:
        await self._note(ctx, f"activate:{ctx.reason}:{ctx.replica_id}:{ctx.token}")

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        if isinstance(input, dict) and input.get("sleep_s"):
            await asyncio.sleep(float(input["sleep_s"]))
        yield {"echo": input}

    async def passivate(self, ctx: SessionContext, reason: str) -> None:
        await self._note(ctx, f"passivate:{reason}")
