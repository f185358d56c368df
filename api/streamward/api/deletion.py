"""Session deletion: the runs a delete drops still end, each with its own terminal entry."""

from __future__ import annotations

from streamward.core.contract import TERMINAL_STATUSES, Entry
from streamward.lua.errors import SeqGap, StaleToken
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

# a delete ends at most this many pending runs itself (an inbox beyond is a quota matter)
DELETE_END_MAX_RUNS = 10_000
# how often a delete fences a runner that acquired the session while it ended its runs
DELETE_REFENCES = 5


async def end_deleted_runs(
    store: LeaseStore, streams: Streams, sk: SessionKeys, active: str | None, epoch: int
) -> list[tuple[str, Entry]]:
    """Write every run the delete drops its terminal ``run.cancelled`` (reason deleted): the
    running one and every input still pending, so each acknowledged invoke's caller and
    stream see an end.

    Read after the fence: the inbox holds the running input and those behind it; ``active``
    covers a run whose input was already completed. The force release's new epoch is a
    token no runner holds, so these writes are fenced like any other. A runner may still
    acquire the session before the inbox is gone (the fenced owner re-queues what it leaves
    behind; the liveness sweep sees pending input): its acquisition makes our token stale,
    so the delete fences it in turn (another force release) and writes on, a bounded number
    of times. A write that lands twice is impossible: each is checked against the run's
    state first, and the log's seq check refuses a gap or a repeat.

    Returns the (run id, entry) pairs written (their callbacks are due, api/callbacks.py).
    """
    peek = await store.peek_inbox(sk, DELETE_END_MAX_RUNS, with_head=False)
    run_ids = list(dict.fromkeys([*([active] if active else []), *(m.run_id for m in peek.metas)]))
    fences = 0
    written: list[tuple[str, Entry]] = []
    for run_id in run_ids:
        while True:
            rs = await streams.run_state(sk, run_id)
            if rs is not None and rs.status in TERMINAL_STATUSES:
                break  # its owner ended it before the release (e.g. on the cancel mail)
            seq = await streams.last_seq(sk) + 1
            entry = Entry(seq, "run.cancelled", {"reason": "deleted"})
            try:
                await store.ingest(sk, run_id, epoch, [entry])
                written.append((run_id, entry))
                break
            except (StaleToken, SeqGap):
                fences += 1
                if fences > DELETE_REFENCES:
                    return written  # a runner keeps taking it: the retired session's owner ends it
                epoch = (await store.force_release(sk, "deleted", "deleted")).new_epoch
    return written
