"""The fencing checker: does a session transcript show any write by a superseded owner?

Reused by the topology tests (tests/scale/) and the chaos suite. A session log is written only
by ``ingestEntries`` (fenced: the caller's token must equal the session epoch) with the
session-wide seq as entry id, so a healthy log has

- seqs exactly 1..n in log order: no gap, no duplicate, nothing out of order;
- tokens non-decreasing in seq order: once a newer owner (larger token) has written, no entry
  of an older owner follows. An entry with a smaller token after a larger one is a stale
  write that fencing should have refused;
- every token >= 1 (a session never acquired accepts nobody).

``check_log_fencing(entries)`` returns the violations as readable strings (empty = clean), so a
test can ``assert check_log_fencing(log) == []`` and see every problem at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lua.keys import Keys


@dataclass(frozen=True)
class FencingEntry:
    """The two fields the checker reads (plus what makes a message useful)."""

    seq: int
    token: int
    type: str = ""
    run_id: str = ""


def _as_entry(item: Any) -> FencingEntry:
    """Accept redis field maps, LogEntry / LogItem objects, or (entry id, fields) pairs."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
        item = item[1]
    if isinstance(item, Mapping):
        return FencingEntry(
            int(item["seq"]),
            int(item["token"]),
            str(item.get("type", "")),
            str(item.get("run_id", "")),
        )
    return FencingEntry(
        int(item.seq),
        int(item.token),
        str(getattr(item, "type", "")),
        str(getattr(item, "run_id", "")),
    )


def check_log_fencing(entries: Iterable[Any], session: str = "") -> list[str]:
    """Violations of the fencing invariants in one session log, in log order (see module)."""
    where = f"{session}: " if session else ""
    problems: list[str] = []
    prev: FencingEntry | None = None
    high = 0  # highest seq seen: each anomaly is reported once, not for every later entry
    for i, raw in enumerate(entries):
        e = _as_entry(raw)
        expected_seq = high + 1
        if e.seq != expected_seq:
            kind = "duplicate or out of order" if e.seq < expected_seq else "gap"
            problems.append(
                f"{where}entry #{i + 1} has seq {e.seq}, expected {expected_seq} ({kind})"
            )
        if e.token < 1:
            problems.append(f"{where}seq {e.seq} ({e.type}) has token {e.token} < 1")
        if prev is not None and e.token < prev.token:
            problems.append(
                f"{where}stale write: seq {e.seq} ({e.type} of {e.run_id or '?'}) has token "
                f"{e.token} after seq {prev.seq} with token {prev.token}"
            )
        prev = e
        high = max(high, e.seq)
    return problems


def read_log(client: Any, keys: Keys, ref: str) -> list[dict[str, str]]:
    """Every entry of one session log (``project/session_id``), oldest first, with a sync
    decoding client (standalone, Sentinel master or Cluster: one key per call)."""
    sk = keys.session_ref(ref)
    out: list[dict[str, str]] = []
    after = "-"
    while True:
        page = client.xrange(sk.log, min=after, count=1000)
        out.extend(dict(fields) for _, fields in page)
        if len(page) < 1000:
            return out
        after = f"({page[-1][0]}"


def check_all_logs(client: Any, keys: Keys, refs: Iterable[str] | None = None) -> list[str]:
    """``check_log_fencing`` over many sessions (default: every session in the index)."""
    if refs is None:
        refs = [str(m) for m, _ in client.zscan_iter(keys.sessions)]
    problems: list[str] = []
    for ref in refs:
        problems += check_log_fencing(read_log(client, keys, ref), ref)
    return problems
