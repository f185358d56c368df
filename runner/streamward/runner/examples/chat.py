"""``Chat``: a conversation kept in memory, snapshotted with ``save_state`` after every turn,
so the next owner (after an idle passivation, a drain or a kill -9 of this one) answers
with the whole conversation.

Input: ``{"text": str}``. Output: ``{"reply", "turn", "previous", "turns", "activation"}``:
the reply names how many messages the conversation has and what came before, so a lost turn
shows; ``activation`` is how this instance began (``ctx.reason``). Follow-up
messages queued while a turn runs are folded into it (``ctx.pending_inputs()``; each ends
``run.merged``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from streamward.runner import RunContext, Session, SessionContext

# a conversation kept whole would outgrow STREAMWARD_STATE_MAX_BYTES: keep the newest turns
MAX_TURNS = 200


def _text(input: Any) -> str:
    if not isinstance(input, dict) or not isinstance(input.get("text"), str):
        raise TypeError('chat input must be an object {"text": "..."}')
    return str(input["text"])


class Chat(Session):
    async def activate(self, ctx: SessionContext) -> None:
        saved = ctx.state if isinstance(ctx.state, dict) else {}
        # [{"run_id", "text"}]: the run id makes a turn idempotent when the run is restarted
        # after its owner died between saving and the run's end
        self.turns: list[dict[str, str]] = list(saved.get("turns", []))
        self.activated_as = ctx.reason

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        text = _text(input)
        if not any(t["run_id"] == ctx.run_id for t in self.turns):
            previous = self.turns[-1]["text"] if self.turns else None
            self.turns.append({"run_id": ctx.run_id, "text": text})
        else:  # a restarted run: its turn is already in the conversation
            idx = next(i for i, t in enumerate(self.turns) if t["run_id"] == ctx.run_id)
            previous = self.turns[idx - 1]["text"] if idx > 0 else None
        async for extra in ctx.pending_inputs():
            self.turns.append({"run_id": f"merged:{ctx.run_id}", "text": _text(extra)})
        del self.turns[:-MAX_TURNS]
        await ctx.save_state({"turns": self.turns})  # durable before the answer is sent
        yield {
            "reply": f"message {len(self.turns)}: {self.turns[-1]['text']!r}",
            "turn": len(self.turns),
            "previous": previous,
            "turns": [t["text"] for t in self.turns],
            "activation": self.activated_as,  # how this instance began (new, takeover, ...)
        }

    async def passivate(self, ctx: SessionContext, reason: str) -> None:
        if ctx.can_write and reason in ("idle", "drain", "stopped"):
            await ctx.save_state({"turns": self.turns})
