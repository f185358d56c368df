"""Session hosts the multi-process tests load with ``--handler tests.runner.hosts:...``."""

from __future__ import annotations

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
