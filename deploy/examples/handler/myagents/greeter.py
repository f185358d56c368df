"""``Greeter``: a session host that remembers who it greeted (docs/runner.md, "Writing a
session host"). Input ``{"name": str}``; output ``{"greeting", "seen"}``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from streamward.runner import RunContext, Session, SessionContext


class Greeter(Session):
    async def activate(self, ctx: SessionContext) -> None:
        saved = ctx.state if isinstance(ctx.state, dict) else {}
        self.seen: list[str] = list(saved.get("seen", []))

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        name = str(input.get("name", "world")) if isinstance(input, dict) else "world"
        if name not in self.seen:
            self.seen.append(name)
            await ctx.save_state({"seen": self.seen})  # durable before the answer
        yield {"greeting": f"hello {name}", "seen": len(self.seen)}
