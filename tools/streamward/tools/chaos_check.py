"""The chaos suite's checker: did fencing hold, did anything acknowledged get lost?

Pure functions over three recorded inputs (nothing here talks to the fleet except the two log
readers):

* the **ingest audit** (``api/audit.py``): one record per ingest attempt and its outcome;
* the **invoke records** (``InvokeRecord``) of the load generator;
* the **session logs** (``read_logs``): the transcripts as stored, the truth of what was
  accepted.

``check_history`` proves (issue 7), each failure filed under a kind of ``CheckReport``:

1. ``stale_write``: for every session, accepted writes never come from a token lower than one
   already accepted. Acceptance order is the seq order (Redis serialises the fenced appends
   and the seq is the log order), never wall-clock across API processes. Checked in the log
   (tokens non-decreasing in seq order) and in the audit (accepted records sorted by
   ``first_seq`` have non-decreasing tokens). ``stale_refusal``: a ``stale_token`` answer must
   name a newer current token than the caller's.
2. ``concurrent_holders``: within a session, one token = one holder (one ``replica_id`` and
   incarnation, in the audit and in the ``run.started`` entries), the holders' accepted seq
   ranges never interleave, and no log entry is covered by an accepted audit record of
   another token.
3. ``lost_invoke``: every acknowledged invoke (202, or a stream whose first line arrived) has
   a terminal entry (``run.completed`` / ``run.failed`` / ``run.cancelled`` /
   ``run.merged``) of its run in its session's log. ``run.interrupted`` is not terminal:
   the next owner re-runs the run.
4. ``seq``: each session's log has seq 1..n, no gap, no duplicate; ``lost_entry``: every seq
   the audit says was accepted is in the log.
5. ``duplicate_terminal``: a run has at most one terminal entry.

With ``actions`` (the operator actions and poison inputs the harness applied, issue 13):

6. ``stranded``: an acknowledged invoke of a session an operator acted on (force release,
   delete, route reset) with no terminal entry (filed here instead of ``lost_invoke``).
7. ``force_release_reason``: the run active at a force release is interrupted with
   ``reason: force_release`` and the operator's reason text in its ``run.interrupted``.
8. ``poison``: a poison input ends ``run.failed`` with ``error_type: poison``, started at
   most ``poison_max_owners`` times; ``poison_spread``: the fleet stopped dying (no more
   runner deaths outside the harness's own faults than ``poison_max_owners`` per input).

``check_exactly_once`` is the rolling-update property: every acknowledged invoke ran exactly
once (one ``run.started``, one terminal entry, never interrupted) and nothing ran that nobody
invoked.

Read the audit *before* the logs (or stop the fleet first): logs only grow, so every seq an
audit record names is then in the logs read; entries written in between only show up as the
``unaudited_entries`` stat.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamward.core.contract import TERMINAL_TYPES as TERMINAL_TYPES  # re-exported
from streamward.lua.keys import Keys

# how many messages of one kind ``summary`` prints before "... and N more"
SUMMARY_LIMIT = 20


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvokeRecord:
    """One invoke the load generator sent, and what the caller was told."""

    session: str  # "project/session_id"
    run_id: str | None  # known once acknowledged
    mode: str  # "detached" | "stream"
    acked: bool  # 202 received, or a stream whose first line arrived
    api: str  # base URL of the API instance asked
    sent_ns: int  # time.time_ns() when sent
    acked_ns: int | None  # time.time_ns() when acknowledged
    status: int | None  # HTTP status (None: connection error)
    idempotency_key: str | None = None

    @property
    def latency_ns(self) -> int | None:
        """Send to acknowledgement (None when never acknowledged)."""
        return None if self.acked_ns is None else self.acked_ns - self.sent_ns


@dataclass(frozen=True)
class FencingEntry:
    """The two fields the checker reads (plus what makes a message useful)."""

    seq: int
    token: int
    type: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """One ingest audit line, typed (missing optional fields get neutral defaults)."""

    session: str
    run_id: str
    token: int
    replica_id: str | None
    incarnation: str | None
    first_seq: int
    last_seq: int
    outcome: str
    accepted: int = 0
    duplicates: int = 0
    current_token: int | None = None
    ts_ns: int = 0
    api_pid: int = 0

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> AuditRecord:
        current = raw.get("current_token")
        replica = raw.get("replica_id")
        incarnation = raw.get("incarnation")
        return cls(
            session=str(raw["session"]),
            run_id=str(raw.get("run_id", "")),
            token=int(raw["token"]),
            replica_id=None if replica is None else str(replica),
            incarnation=None if incarnation is None else str(incarnation),
            first_seq=int(raw["first_seq"]),
            last_seq=int(raw["last_seq"]),
            outcome=str(raw["outcome"]),
            accepted=int(raw.get("accepted") or 0),
            duplicates=int(raw.get("duplicates") or 0),
            current_token=None if current is None else int(current),
            ts_ns=int(raw.get("ts_ns") or 0),
            api_pid=int(raw.get("api_pid") or 0),
        )

    @property
    def holder(self) -> str:
        return f"{self.replica_id}/{self.incarnation}" if self.replica_id else "?"

    @property
    def written(self) -> tuple[int, int] | None:
        """The seqs this attempt appended: a batch is consecutive seqs and the script counts
        the ones already stored (always its head) as duplicates, so the tail was written."""
        if self.outcome != "accepted" or self.accepted <= 0:
            return None
        return self.last_seq - self.accepted + 1, self.last_seq

    def describe(self) -> str:
        return (
            f"token {self.token} ({self.holder}) seq {self.first_seq}..{self.last_seq} "
            f"run {self.run_id or '?'}"
        )


FORCE_RELEASE = "force_release"
DELETE = "delete"
RESET = "reset"
DRAIN = "drain"
POISON = "poison"
# actions after which a session's unfinished invokes are "stranded" rather than "lost"
SESSION_ACTIONS = frozenset({FORCE_RELEASE, DELETE, RESET, POISON})


@dataclass(frozen=True)
class OperatorAction:
    """An operator action (or poison input) the harness applied, as the checker needs it."""

    kind: str  # force_release | delete | reset | drain | poison
    session: str = ""  # "project/session_id" ("" for a drain)
    at_ns: int = 0  # time.time_ns() when applied
    run_id: str | None = None  # force_release: the run active then; poison: the poison run
    reason: str = ""  # force_release: the operator's reason text
    held: bool = True  # force_release: a live owner held the lease (a run to interrupt)
    replica_id: str = ""  # drain: the replica drained

    def describe(self) -> str:
        what = self.session or self.replica_id
        return f"{self.kind} of {what}" + (f" (reason {self.reason!r})" if self.reason else "")


# -- report ------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """Violations by property (empty = the history is clean) and counts of what was seen."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def add(self, kind: str, message: str) -> None:
        self.violations.setdefault(kind, []).append(message)

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    def merge(self, other: CheckReport) -> CheckReport:
        """Both reports in one (stats of the same name are summed)."""
        out = CheckReport({k: list(v) for k, v in self.violations.items()}, dict(self.stats))
        for kind, messages in other.violations.items():
            for m in messages:
                out.add(kind, m)
        for stat, n in other.stats.items():
            out.count(stat, n)
        return out

    def summary(self, limit: int = SUMMARY_LIMIT) -> str:
        """Verdict, counts per kind, at most ``limit`` messages per kind, then the stats."""
        total = sum(len(v) for v in self.violations.values())
        if self.ok:
            lines = ["chaos check: OK (no violation)"]
        else:
            per_kind = ", ".join(f"{k}: {len(v)}" for k, v in sorted(self.violations.items()) if v)
            lines = [f"chaos check: FAILED, {total} violations ({per_kind})"]
        for kind, messages in sorted(self.violations.items()):
            if not messages:
                continue
            lines.append(f"[{kind}] {len(messages)}")
            lines += [f"  - {m}" for m in messages[:limit]]
            if len(messages) > limit:
                lines.append(f"  ... and {len(messages) - limit} more")
        if self.stats:
            lines.append("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())))
        return "\n".join(lines)


# -- the log checker (moved here from tests/fencing.py) ------------------------------------------


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


def _log_problems(entries: Iterable[Any], session: str = "") -> list[tuple[str, str]]:
    """(kind, message) for every fencing or seq anomaly of one log, in log order."""
    where = f"{session}: " if session else ""
    problems: list[tuple[str, str]] = []
    prev: FencingEntry | None = None
    high = 0  # highest seq seen: each anomaly is reported once, not for every later entry
    for i, raw in enumerate(entries):
        e = _as_entry(raw)
        expected_seq = high + 1
        if e.seq != expected_seq:
            kind = "duplicate or out of order" if e.seq < expected_seq else "gap"
            problems.append(
                ("seq", f"{where}entry #{i + 1} has seq {e.seq}, expected {expected_seq} ({kind})")
            )
        if e.token < 1:
            problems.append(
                ("stale_write", f"{where}seq {e.seq} ({e.type}) has token {e.token} < 1")
            )
        if prev is not None and e.token < prev.token:
            problems.append(
                (
                    "stale_write",
                    f"{where}stale write: seq {e.seq} ({e.type} of {e.run_id or '?'}) has token "
                    f"{e.token} after seq {prev.seq} with token {prev.token}",
                )
            )
        prev = e
        high = max(high, e.seq)
    return problems


def check_log_fencing(entries: Iterable[Any], session: str = "") -> list[str]:
    """Violations of the fencing invariants in one session log, in log order.

    A healthy log has seqs exactly 1..n in log order, tokens non-decreasing in seq order (an
    entry with a smaller token after a larger one is a stale write fencing should have
    refused) and every token >= 1 (a session never acquired accepts nobody). Returns readable
    strings (empty = clean), so a test can ``assert check_log_fencing(log) == []``.
    """
    return [message for _, message in _log_problems(entries, session)]


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


def read_logs(client: Any, keys: Keys, refs: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """``read_log`` for each session ref (a session with no log maps to ``[]``)."""
    return {ref: read_log(client, keys, ref) for ref in dict.fromkeys(refs)}


def check_all_logs(client: Any, keys: Keys, refs: Iterable[str] | None = None) -> list[str]:
    """``check_log_fencing`` over many sessions (default: every session in the index)."""
    if refs is None:
        refs = [str(m) for m, _ in client.zscan_iter(keys.sessions)]
    problems: list[str] = []
    for ref in refs:
        problems += check_log_fencing(read_log(client, keys, ref), ref)
    return problems


# -- runs in a log -----------------------------------------------------------------------------


@dataclass
class _RunSeen:
    """What one run_id left in its session log."""

    started: list[int] = field(default_factory=list)  # seqs of run.started
    terminal: list[tuple[int, str]] = field(default_factory=list)  # (seq, type)
    interrupted: list[int] = field(default_factory=list)
    tokens: set[int] = field(default_factory=set)
    # data of the run.interrupted / terminal entries (same order as the seq lists)
    interrupted_data: list[dict[str, Any]] = field(default_factory=list)
    terminal_data: list[dict[str, Any]] = field(default_factory=list)
    started_tokens: list[int] = field(default_factory=list)
    terminal_tokens: list[int] = field(default_factory=list)


def _field(raw: Any, name: str, default: str = "") -> str:
    if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], Mapping):
        raw = raw[1]
    if isinstance(raw, Mapping):
        return str(raw.get(name, default))
    return str(getattr(raw, name, default))


def _data(raw: Any) -> dict[str, Any]:
    """An entry's ``data`` (stored as JSON text) as a dict (``{}`` when absent or not one)."""
    if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], Mapping):
        raw = raw[1]
    data = raw.get("data") if isinstance(raw, Mapping) else getattr(raw, "data", None)
    if isinstance(data, str | bytes):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
    return dict(data) if isinstance(data, Mapping) else {}


def _started_replica(raw: Any) -> str | None:
    """``replica_id`` of a ``run.started`` entry's data."""
    replica = _data(raw).get("replica_id")
    return None if replica is None else str(replica)


def _runs(entries: Sequence[Any]) -> dict[str, _RunSeen]:
    runs: dict[str, _RunSeen] = defaultdict(_RunSeen)
    for raw in entries:
        e = _as_entry(raw)
        run = runs[e.run_id]
        run.tokens.add(e.token)
        if e.type == "run.started":
            run.started.append(e.seq)
            run.started_tokens.append(e.token)
        elif e.type in TERMINAL_TYPES:
            run.terminal.append((e.seq, e.type))
            run.terminal_data.append(_data(raw))
            run.terminal_tokens.append(e.token)
        elif e.type == "run.interrupted":
            run.interrupted.append(e.seq)
            run.interrupted_data.append(_data(raw))
    return dict(runs)


def _check_logs(
    logs: Mapping[str, Sequence[Any]],
    report: CheckReport,
    duplicates: CheckReport | None = None,
) -> dict[str, dict[str, _RunSeen]]:
    """Property 4 and the log half of property 1 for every session (and, into
    ``duplicates``, property 5); returns the runs seen."""
    runs: dict[str, dict[str, _RunSeen]] = {}
    for ref, entries in logs.items():
        report.count("sessions")
        report.count("log_entries", len(entries))
        for kind, message in _log_problems(entries, ref):
            report.add(kind, message)
        tokens = [_as_entry(e).token for e in entries]
        report.count("takeovers", sum(1 for a, b in itertools.pairwise(tokens) if a != b))
        runs[ref] = _runs(entries)
        for run_id, run in runs[ref].items():
            report.count("runs_started", bool(run.started))
            report.count("runs_restarted", bool(run.interrupted))
            report.count("runs_terminal", bool(run.terminal))
            # distinct seqs: a repeated entry (same seq) is the seq check's finding
            if len({seq for seq, _ in run.terminal}) > 1 and duplicates is not None:
                duplicates.add(
                    "duplicate_terminal",
                    f"{ref}: run {run_id} has {len(run.terminal)} terminal entries {run.terminal}",
                )
    return runs


# -- check_history -----------------------------------------------------------------------------


def _check_audit(
    records: list[AuditRecord], logs: Mapping[str, Sequence[Any]], report: CheckReport
) -> None:
    """Properties 1 and 2 from the audit, and the audit against the logs."""
    accepted_by_session: dict[str, list[AuditRecord]] = defaultdict(list)
    for r in records:
        report.count("audit_records")
        if r.outcome == "accepted":
            report.count("accepted_records")
            report.count("accepted_entries", r.accepted)
            report.count("duplicates", r.duplicates)
            accepted_by_session[r.session].append(r)
            if r.replica_id is None:
                report.count("records_without_replica")
        elif r.outcome == "stale_token":
            report.count("stale_refused")
            if r.current_token is None or r.token >= r.current_token:
                report.add(
                    "stale_refusal",
                    f"{r.session}: {r.describe()} refused stale with current token "
                    f"{r.current_token}: a stale refusal must name a newer token",
                )
        elif r.outcome == "not_owner":
            # the current token but the lease names another holder: a repeated token number
            # (a Redis failover lost an acquisition) told apart and refused
            report.count("not_owner_refused")
        elif r.outcome == "seq_gap":
            # a runner skipping seqs (or a Redis failover losing accepted writes): refused,
            # nothing written; the log check shows whether a gap got in
            report.count("seq_gap_refused")
        else:
            report.count("audit_unknown_outcome")
    for ref, accepted in sorted(accepted_by_session.items()):
        _check_session_audit(ref, accepted, logs.get(ref), report)


def _check_session_audit(
    ref: str, accepted: list[AuditRecord], log: Sequence[Any] | None, report: CheckReport
) -> None:
    # 1. acceptance order = seq order; ties (a retry of the same batch) keep audit order
    ordered = sorted(accepted, key=lambda r: (r.first_seq, r.ts_ns))
    high: AuditRecord | None = None
    for r in ordered:
        if high is not None and r.token < high.token:
            report.add(
                "stale_write",
                f"{ref}: audit: accepted {r.describe()} after accepted {high.describe()}",
            )
        if high is None or r.token > high.token:
            high = r

    # 2a. one token, one holder
    holders: dict[int, set[tuple[str, str | None]]] = defaultdict(set)
    for r in accepted:
        if r.replica_id is not None:
            holders[r.token].add((r.replica_id, r.incarnation))
    for token, who in sorted(holders.items()):
        if len(who) > 1:
            names = ", ".join(sorted(f"{rep}/{inc}" for rep, inc in who))
            report.add("concurrent_holders", f"{ref}: token {token} accepted from {names}")

    # 2b. holders' written seq ranges never interleave
    spans: dict[int, tuple[int, int]] = {}
    for r in accepted:
        w = r.written
        if w is not None:
            lo, hi = spans.get(r.token, w)
            spans[r.token] = (min(lo, w[0]), max(hi, w[1]))
    prev: tuple[int, tuple[int, int]] | None = None  # the span reaching furthest so far
    for token, (lo, hi) in sorted(spans.items(), key=lambda kv: kv[1]):
        if prev is not None and lo <= prev[1][1]:
            p_token, (p_lo, p_hi) = prev
            report.add(
                "concurrent_holders",
                f"{ref}: token {token} ({_names(holders, token)}) wrote seq {lo}..{hi} while "
                f"token {p_token} ({_names(holders, p_token)}) wrote seq {p_lo}..{p_hi}",
            )
        if prev is None or hi > prev[1][1]:
            prev = (token, (lo, hi))

    if log is None:
        report.count("sessions_audited_not_read")
        return
    # the log against the audit: who wrote each seq
    covered: dict[int, set[int]] = defaultdict(set)
    for r in accepted:
        for seq in range(r.first_seq, r.last_seq + 1):
            covered[seq].add(r.token)
    entries = [_as_entry(e) for e in log]
    stored = {e.seq for e in entries}
    for e in entries:
        tokens = covered.get(e.seq)
        if not tokens:
            report.count("unaudited_entries")
        elif tokens != {e.token}:
            others = sorted(tokens - {e.token})
            report.add(
                "concurrent_holders",
                f"{ref}: seq {e.seq} ({e.type} of {e.run_id or '?'}) is stored with token "
                f"{e.token} but the audit has it accepted from token(s) {others}",
            )
    for r in accepted:
        w = r.written
        if w is None:
            continue
        missing = [s for s in range(w[0], w[1] + 1) if s not in stored]
        if missing:
            report.add(
                "lost_entry",
                f"{ref}: audit: accepted {r.describe()} but seq {_ranges(missing)} "
                "is not in the log",
            )

    # the run.started entries name their replica: one per token, the audit's holder
    started_by: dict[int, set[str]] = defaultdict(set)
    for raw, e in zip(log, entries, strict=True):
        if e.type == "run.started" and (rep := _started_replica(raw)) is not None:
            started_by[e.token].add(rep)
    for token, reps in sorted(started_by.items()):
        audited = {rep for rep, _ in holders.get(token, set())}
        if audited and not reps <= audited:
            report.add(
                "concurrent_holders",
                f"{ref}: token {token}: run.started by {sorted(reps)}, audit holder "
                f"{sorted(audited)}",
            )


def _check_started_replicas(logs: Mapping[str, Sequence[Any]], report: CheckReport) -> None:
    """From the log alone: all ``run.started`` of one token name one replica."""
    for ref, log in logs.items():
        started_by: dict[int, set[str]] = defaultdict(set)
        for raw in log:
            e = _as_entry(raw)
            if e.type == "run.started" and (rep := _started_replica(raw)) is not None:
                started_by[e.token].add(rep)
        for token, reps in sorted(started_by.items()):
            if len(reps) > 1:
                report.add(
                    "concurrent_holders",
                    f"{ref}: token {token}: run.started by several replicas {sorted(reps)}",
                )


def _names(holders: Mapping[int, set[tuple[str, str | None]]], token: int) -> str:
    who = holders.get(token)
    return ", ".join(sorted(f"{r}/{i}" for r, i in who)) if who else "?"


def _ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"`` (messages stay short for long losses)."""
    parts: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}" if start == prev else f"{start}..{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts)


def _check_invokes(
    invokes: list[InvokeRecord],
    runs: Mapping[str, Mapping[str, _RunSeen]],
    report: CheckReport,
    acted_on: Mapping[str, list[OperatorAction]] | None = None,
) -> None:
    """Property 3: every acknowledged invoke's run reached a terminal entry (property 6 for
    sessions in ``acted_on``: the same rule, filed as ``stranded`` with the actions)."""
    acted_on = acted_on or {}
    seen: set[tuple[str, str]] = set()  # an idempotent repeat names the same run: check once
    for inv in invokes:
        report.count("invokes")
        if not inv.acked:
            report.count("unacked_invokes")
            if inv.run_id and runs.get(inv.session, {}).get(inv.run_id):
                report.count("unacked_invokes_run")  # allowed: the input was taken after all
            continue
        report.count("acked_invokes")
        report.count(f"acked_{inv.mode}")
        if not inv.run_id:
            report.add("lost_invoke", f"{inv.session}: acknowledged invoke without a run_id")
            continue
        if (inv.session, inv.run_id) in seen:
            continue
        seen.add((inv.session, inv.run_id))
        session_runs = runs.get(inv.session)
        if session_runs is None:
            report.add(
                "lost_invoke",
                f"{inv.session}: run {inv.run_id} acknowledged but the session log was not read",
            )
            continue
        run = session_runs.get(inv.run_id)
        if run is None or not run.terminal:
            what = "nothing" if run is None else _run_state(run)
            actions = acted_on.get(inv.session)
            kind, after = "lost_invoke", ""
            if actions:
                kind = "stranded"
                after = "; session had " + ", ".join(a.kind for a in actions)
            report.add(
                kind,
                f"{inv.session}: run {inv.run_id} acknowledged ({inv.mode}, HTTP {inv.status}) "
                f"has no terminal entry; the log has {what}{after}",
            )


def _run_state(run: _RunSeen) -> str:
    return (
        f"{len(run.started)} run.started, {len(run.interrupted)} run.interrupted, "
        f"{len(run.terminal)} terminal (tokens {sorted(run.tokens)})"
    )


def check_history(
    audit: Iterable[Mapping[str, Any]],
    invokes: Iterable[InvokeRecord],
    logs: Mapping[str, Sequence[Mapping[str, str]]],
    *,
    actions: Sequence[OperatorAction] = (),
    poison_max_owners: int = 3,
    runner_deaths: int = 0,
) -> CheckReport:
    """Check issue 7's properties (1-5) over an ingest audit, invokes and session logs, and
    issue 13's (6-8) over the operator ``actions`` applied; ``runner_deaths`` counts runner
    exits the harness did not cause (a poison input's casualties)."""
    report = CheckReport()
    runs = _check_logs(logs, report, report)
    _check_started_replicas(logs, report)
    _check_audit([AuditRecord.of(r) for r in audit], logs, report)
    acted_on: dict[str, list[OperatorAction]] = defaultdict(list)
    for a in actions:
        if a.kind in SESSION_ACTIONS and a.session:
            acted_on[a.session].append(a)
    _check_invokes(list(invokes), runs, report, acted_on)
    _check_actions(actions, runs, report, poison_max_owners, runner_deaths)
    return report


def _check_actions(
    actions: Sequence[OperatorAction],
    runs: Mapping[str, Mapping[str, _RunSeen]],
    report: CheckReport,
    poison_max_owners: int,
    runner_deaths: int,
) -> None:
    """Properties 7 and 8 (property 6 is in ``_check_invokes``)."""
    poisons = 0
    for a in actions:
        report.count(f"action_{a.kind}")
        run = runs.get(a.session, {}).get(a.run_id or "") if a.run_id else None
        if a.kind == FORCE_RELEASE:
            _check_force_release(a, run, report)
        elif a.kind == POISON:
            poisons += 1
            _check_poison(a, run, report, poison_max_owners)
    report.count("runner_deaths_unplanned", runner_deaths)
    if poisons:
        # what the casualties cost everyone else (bounded by the deaths checked below)
        poisoned = {a.session for a in actions if a.kind == POISON}
        report.count(
            "interrupted_outside_poison",
            sum(
                len(run.interrupted)
                for ref, session_runs in runs.items()
                if ref not in poisoned
                for run in session_runs.values()
            ),
        )
    if poisons and runner_deaths > poisons * poison_max_owners:
        report.add(
            "poison_spread",
            f"{runner_deaths} runners died outside the harness's faults, more than "
            f"{poison_max_owners} owners x {poisons} poison input(s): the poison kept killing",
        )
    elif not poisons and runner_deaths:
        report.add(
            "runner_exit",
            f"{runner_deaths} runners exited outside the harness's faults, with no poison input",
        )


def _check_force_release(a: OperatorAction, run: _RunSeen | None, report: CheckReport) -> None:
    if not a.held or not a.run_id:
        report.count("force_release_idle")  # no live owner or no run: nothing to interrupt
        return
    if run is None:
        report.add(
            "force_release_reason",
            f"{a.session}: run {a.run_id} was active at the {a.describe()} but is not in the log",
        )
        return
    ended_first = set(run.terminal_tokens) <= set(run.started_tokens[:1])
    if not run.interrupted and run.started and run.terminal and ended_first:
        # it ended under the owner it started with: its terminal write beat the release
        report.count("force_release_after_end")
        return
    for data in run.interrupted_data:
        if data.get("reason") == FORCE_RELEASE and _mentions(data, a.reason):
            report.count("force_release_interrupted")
            return
    seen = [
        f"{d.get('reason')!r}" + ("" if _mentions(d, a.reason) else " without the text")
        for d in run.interrupted_data
    ]
    report.add(
        "force_release_reason",
        f"{a.session}: run {a.run_id} was active at the {a.describe()}, but no run.interrupted "
        f"says reason 'force_release' with the operator's reason; run.interrupted reasons: "
        f"{', '.join(seen) or 'none'} ({_run_state(run)})",
    )


def _mentions(data: Mapping[str, Any], text: str) -> bool:
    """The operator's reason is one of the entry's values (or inside one)."""
    if not text:
        return True
    return any(isinstance(v, str) and text in v for v in data.values())


def _check_poison(
    a: OperatorAction, run: _RunSeen | None, report: CheckReport, max_owners: int
) -> None:
    if run is None or not run.terminal:
        what = "nothing" if run is None else _run_state(run)
        report.add(
            "poison",
            f"{a.session}: poison run {a.run_id} never ended (expected run.failed, error_type "
            f"poison, after {max_owners} owners died); the log has {what}",
        )
        return
    seq, kind = run.terminal[0]
    data = run.terminal_data[0]
    if kind != "run.failed" or data.get("error_type") != POISON:
        report.add(
            "poison",
            f"{a.session}: poison run {a.run_id} ended {kind} (error_type "
            f"{data.get('error_type')!r}) at seq {seq}, expected run.failed with error_type "
            "'poison'",
        )
    elif len(run.started) > max_owners:
        report.add(
            "poison",
            f"{a.session}: poison run {a.run_id} started {len(run.started)} times, more than "
            f"the {max_owners} owners it may take down",
        )
    else:
        report.count("poison_failed")


# -- check_exactly_once ------------------------------------------------------------------------


def check_exactly_once(
    invokes: Iterable[InvokeRecord],
    logs: Mapping[str, Sequence[Mapping[str, str]]],
    *,
    complete: bool = True,
) -> CheckReport:
    """Every acknowledged invoke ran exactly once (one ``run.started``, one terminal entry,
    no ``run.interrupted``); with ``complete`` (the invoke list names every invoke sent to
    these sessions) no run in the logs is one nobody invoked. The logs' seq / fencing
    checks are included."""
    report = CheckReport()
    runs = _check_logs(logs, report)
    invokes = list(invokes)
    known: dict[str, set[str]] = defaultdict(set)
    unknown_invokes: Counter[str] = Counter()  # invokes whose run_id the caller never learnt
    acked: dict[tuple[str, str], InvokeRecord] = {}
    for inv in invokes:
        report.count("invokes")
        if inv.run_id:
            known[inv.session].add(inv.run_id)
        else:
            unknown_invokes[inv.session] += 1
        if not inv.acked:
            report.count("unacked_invokes")
        elif not inv.run_id:
            report.add("lost_invoke", f"{inv.session}: acknowledged invoke without a run_id")
        else:
            report.count("acked_invokes")
            acked.setdefault((inv.session, inv.run_id), inv)

    for (ref, run_id), inv in acked.items():
        run = runs.get(ref, {}).get(run_id)
        if run is None or not run.started or not run.terminal:
            what = "nothing" if run is None else _run_state(run)
            report.add(
                "lost_invoke",
                f"{ref}: run {run_id} acknowledged ({inv.mode}, HTTP {inv.status}) did not run to "
                f"the end; the log has {what}",
            )
    for ref, session_runs in sorted(runs.items()):
        unknown: list[str] = []
        for run_id, run in session_runs.items():
            if len(run.started) > 1 or len(run.terminal) > 1:
                report.add(
                    "duplicate_run",
                    f"{ref}: run {run_id} ran more than once: {_run_state(run)}, run.started at "
                    f"seq {run.started}, terminal at {[s for s, _ in run.terminal]}",
                )
            if run.interrupted:
                report.add(
                    "interrupted_run",
                    f"{ref}: run {run_id} was interrupted at seq {run.interrupted} "
                    f"({_run_state(run)})",
                )
            if run_id not in known[ref]:
                unknown.append(run_id)
        if not complete or not unknown:
            continue
        if len(unknown) <= unknown_invokes[ref]:
            # as many unnamed invokes (connection errors) as runs nobody knows: theirs
            report.count("unattributed_runs", len(unknown))
        else:
            for run_id in sorted(unknown):
                report.add(
                    "unknown_run",
                    f"{ref}: run {run_id} is in the log but no invoke names it "
                    f"({unknown_invokes[ref]} invoke(s) without a run_id)",
                )
    return report
