"""Session deletion: the runs a delete drops still end, each with its own terminal entry."""

from __future__ import annotations

from streamward.core.contract import TERMINAL_STATUSES, Entry
from streamward.lua.errors import SeqGap, StaleToken
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

# a delete ends at most this many pending runs itself (an inbox beyond is a quota matter)
DELETE_END_MAX_RUNS = 10_000


async def end_deleted_runs(
    store: LeaseStore, streams: Streams, sk: SessionKeys, active: str | None, epoch: int
) -> None:
    """Write every run the delete drops its terminal ``run.cancelled`` (reason deleted): the
    running one and every input still pending, so each acknowledged invoke's caller and
    stream see an end.

    Read after the fence (nobody writes now): the inbox holds the running input and those
    behind it; ``active`` covers a run whose input was already completed. The force
    release's new epoch is a token no runner ever holds (the next acquisition increments it
    again), so these writes are fenced like any other: refused if anyone acquired the
    session meanwhile.
    """
    peek = await store.peek_inbox(sk, DELETE_END_MAX_RUNS, with_head=False)
    run_ids = list(dict.fromkeys([*([active] if active else []), *(m.run_id for m in peek.metas)]))
    seq = await streams.last_seq(sk) + 1
    for run_id in run_ids:
        rs = await streams.run_state(sk, run_id)
        if rs is not None and rs.status in TERMINAL_STATUSES:
            continue  # its owner ended it before the release (e.g. on the cancel mail)
        try:
            await store.ingest(
                sk, run_id, epoch, [Entry(seq, "run.cancelled", {"reason": "deleted"})]
            )
        except (StaleToken, SeqGap):
            return  # someone acquired the session meanwhile: its owner answers for the rest
        seq += 1
