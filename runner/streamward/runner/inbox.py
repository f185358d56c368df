"""Rules about a session's inbox shared by the actor and the mailbox."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamward.lua.inbox import InboxMeta, RawInboxEntry, RunState
from streamward.lua.keys import SessionKeys
from streamward.lua.replies import InboxPeek
from streamward.lua.scripts import Announce
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

if TYPE_CHECKING:  # owner_death imports this module
    from streamward.runner.owner_death import SessionState

# the next input: its metadata, its fields unparsed, the reason it is cancelled instead of
# run (None: run it) and its run state (None: never started)
NextInput = tuple[InboxMeta, RawInboxEntry | None, str | None, RunState | None]

INBOX_WINDOW = 100  # inputs read at once when looking at an inbox


def stream_id(entry_id: str) -> tuple[int, int]:
    """Stream ids compare as (ms, seq) integer pairs, not as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def interrupt_waiting(items: Iterable[InboxMeta], head_id: str) -> bool:
    """The one rule for "is an interrupting input waiting?".

    ``items`` are the oldest inputs of an inbox and ``head_id`` the input that runs (or is
    about to run: the inbox's oldest). An interrupting input is any *other* input with
    ``multitask=interrupt``; it cancels the head's run and everything queued before it.
    """
    return any(i.multitask == "interrupt" and i.id != head_id for i in items)


def announce_for(
    state: SessionState, replica_id: str | None, poison_after_owners: int
) -> Announce | None:
    """What ``peekInbox`` / ``advanceInbox`` need to publish a runnable head's start notice
    themselves (a hop sooner than the owner can after their reply), or None: no owner
    (``replica_id`` None: not activated yet, or leaving), or one that would not run the
    head at once even when runnable (the ``queue`` policy's hold, the ``drop`` policy)."""
    if replica_id is None or state.dead or state.drop_until or state.hold_until:
        return None
    return replica_id, poison_after_owners


async def next_input(
    store: LeaseStore,
    streams: Streams,
    session: SessionKeys,
    state: SessionState,
    token: int,
    poison_after_owners: int,
    peeked: InboxPeek | None = None,
    announce_as: str | None = None,
) -> NextInput | None:
    """The session's next input, or None (empty, or held by the ``queue`` policy).

    One ``peekInbox`` round trip: only the head input is read in full, the lookahead
    (interrupting inputs, the queue policy's hold) needs ids and modes only. The peek also
    records (fenced by ``token``) that this owner takes the head; when the owners before it
    that took the head reach ``poison_after_owners`` (0: never), the reason is ``poison``.
    ``peeked``: that peek made already (``advanceInbox``, with the previous run's advance).
    ``announce_as``: this owner's replica id when it runs a runnable head at once (see
    ``announce_for``), so the peek publishes the head's start notice itself.
    """
    if peeked is None:
        announce = announce_for(state, announce_as, poison_after_owners)
        peeked = await store.peek_inbox(session, INBOX_WINDOW, token=token, announce=announce)
    peek = peeked
    metas = peek.metas
    if not metas:
        return None
    state.head_taken = metas[0].id if peek.owners >= 1 else ""
    state.head_announced = metas[0].id if peek.announced else ""
    if 0 < poison_after_owners <= peek.owners - 1:
        return metas[0], peek.head, "poison", peek.state
    hold = state.hold_until
    if hold is not None:
        last = metas[-1].id if len(metas) < INBOX_WINDOW else await streams.inbox_last_id(session)
        if stream_id(last) <= stream_id(hold):
            return None  # queue policy: wait for the next input to arrive
        state.hold_until = None
        await streams.set_meta(session, hold_until_id="")
    # multitask=interrupt: an interrupting input cancels everything queued before it
    if interrupt_waiting(metas, metas[0].id):
        return metas[0], peek.head, "interrupt", peek.state
    return metas[0], peek.head, "cancel" if peek.cancel_requested else None, peek.state
