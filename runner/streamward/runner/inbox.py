"""Rules about a session's inbox shared by the actor and the mailbox."""

from __future__ import annotations

from collections.abc import Iterable

from streamward.lua.inbox import InboxItem

INBOX_WINDOW = 100  # inputs read at once when looking at an inbox


def stream_id(entry_id: str) -> tuple[int, int]:
    """Stream ids compare as (ms, seq) integer pairs, not as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def interrupt_waiting(items: Iterable[InboxItem], head_id: str) -> bool:
    """The one rule for "is an interrupting input waiting?".

    ``items`` are the oldest inputs of an inbox and ``head_id`` the input that runs (or is
    about to run: the inbox's oldest). An interrupting input is any *other* input with
    ``multitask=interrupt``; it cancels the head's run and everything queued before it.
    """
    return any(i.multitask == "interrupt" and i.id != head_id for i in items)
