"""The chaos checker on synthetic histories: it passes clean ones and flags every violation."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamward.tools.chaos_check import (
    CheckReport,
    InvokeRecord,
    OperatorAction,
    check_exactly_once,
    check_history,
    check_log_fencing,
)

S = "default/s1"


class History:
    """Builds a session log plus the ingest audit and invokes that go with it."""

    def __init__(self) -> None:
        self.logs: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.audit: list[dict[str, Any]] = []
        self.invokes: list[InvokeRecord] = []
        self.actions: list[OperatorAction] = []
        self.runner_deaths = 0

    def write(
        self,
        token: int,
        replica: str,
        types: list[str],
        run_id: str = "run_a",
        *,
        session: str = S,
        incarnation: str = "inc-1",
        audited: bool = True,
        data_of: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[int, int]:
        """An owner's accepted batch: appended to the log and (unless not) audited;
        ``data_of`` gives the data of entries by type (run.started has its own)."""
        log = self.logs[session]
        first = len(log) + 1
        for t in types:
            data: dict[str, Any] = dict((data_of or {}).get(t, {}))
            if t == "run.started":
                data = {"replica_id": replica, "attempt": 1, "input": {}}
            seq = len(log) + 1
            log.append(
                {
                    "seq": str(seq),
                    "type": t,
                    "run_id": run_id,
                    "token": str(token),
                    "data": orjson.dumps(data).decode(),
                    "ts": str(1_000 + seq),
                }
            )
        last = len(log)
        if audited:
            self.record(session, token, replica, first, last, accepted=last - first + 1)
            self.audit[-1].update(run_id=run_id, incarnation=incarnation)
        return first, last

    def record(
        self,
        session: str,
        token: int,
        replica: str | None,
        first: int,
        last: int,
        outcome: str = "accepted",
        **extra: Any,
    ) -> None:
        rec: dict[str, Any] = {
            "ts_ns": len(self.audit),
            "api_pid": 1,
            "session": session,
            "run_id": "run_a",
            "token": token,
            "replica_id": replica,
            "incarnation": "inc-1",
            "first_seq": first,
            "last_seq": last,
            "outcome": outcome,
            "accepted": 0,
            "duplicates": 0,
        }
        rec.update(extra)
        self.audit.append(rec)

    def invoke(self, run_id: str | None, *, acked: bool = True, session: str = S) -> None:
        self.invokes.append(
            InvokeRecord(
                session=session,
                run_id=run_id,
                mode="detached",
                acked=acked,
                api="http://127.0.0.1:1",
                sent_ns=1,
                acked_ns=2 if acked else None,
                status=202 if acked else None,
            )
        )

    def __repr__(self) -> str:  # hypothesis prints the failing example
        return f"History(logs={dict(self.logs)!r}, audit={self.audit!r})"

    def check(self) -> CheckReport:
        return check_history(
            self.audit,
            self.invokes,
            self.logs,
            actions=self.actions,
            poison_max_owners=3,
            runner_deaths=self.runner_deaths,
        )


def clean() -> History:
    """r1 (token 1) runs run_a, starts run_b and dies; r2 (token 2) takes over, restarts
    run_b and runs run_c; r1's late retry is refused stale; r2 retries a batch (duplicates)."""
    h = History()
    h.write(1, "r1", ["run.started", "run.output", "run.completed"], "run_a")
    h.write(1, "r1", ["run.started", "run.output"], "run_b")
    h.record(S, 1, "r1", 6, 6, "stale_token", current_token=2, run_id="run_b")
    h.write(2, "r2", ["run.interrupted"], "run_b", incarnation="inc-7")
    first, last = h.write(
        2, "r2", ["run.started", "run.output", "run.completed"], "run_b", incarnation="inc-7"
    )
    h.record(S, 2, "r2", first, last, duplicates=3, incarnation="inc-7", run_id="run_b")
    h.write(2, "r2", ["run.started", "run.completed"], "run_c", incarnation="inc-7")
    for run in ("run_a", "run_b", "run_c"):
        h.invoke(run)
    h.invoke(None, acked=False)  # a connection error: no run, not a violation
    return h


def kinds(report: CheckReport) -> set[str]:
    return {k for k, v in report.violations.items() if v}


def test_clean_history_passes() -> None:
    report = clean().check()
    assert report.ok, report.summary()
    assert report.violations == {}
    s = report.stats
    assert s["sessions"] == 1 and s["log_entries"] == 11
    assert s["stale_refused"] == 1 and s["takeovers"] == 1 and s["runs_restarted"] == 1
    assert s["duplicates"] == 3 and s["accepted_records"] == 6
    assert s["acked_invokes"] == 3 and s["unacked_invokes"] == 1
    assert s.get("unaudited_entries", 0) == 0
    assert "OK" in report.summary()


def test_empty_history_passes() -> None:
    assert check_history([], [], {}).ok
    assert check_exactly_once([], {}).ok


def test_unaudited_entries_are_a_stat() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.completed"], audited=False)  # API killed -9 there
    h.write(1, "r1", ["run.started", "run.completed"], "run_b")
    h.invoke("run_a")
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["unaudited_entries"] == 2


def test_records_without_replica_are_a_stat() -> None:
    h = clean()
    h.audit[0]["replica_id"] = None
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["records_without_replica"] == 1


def test_stale_write_in_the_log() -> None:
    h = clean()
    h.write(1, "r1", ["run.output"], "run_b", audited=False)  # the old owner got through
    report = h.check()
    assert "stale_write" in kinds(report)
    assert any("token 1 after seq 11 with token 2" in m for m in report.violations["stale_write"])


def test_stale_write_in_the_audit() -> None:
    h = clean()
    # the audit says token 1 was accepted at seq 12, after token 2; the log has it as token 2
    h.write(2, "r2", ["run.output"], "run_c", incarnation="inc-7", audited=False)
    h.record(S, 1, "r1", 12, 12, accepted=1)
    report = h.check()
    assert "stale_write" in kinds(report)
    assert any(
        m.startswith(f"{S}: audit: accepted token 1") for m in report.violations["stale_write"]
    )
    # and the stored entry disagrees with the audit about who wrote it
    assert any("seq 12" in m for m in report.violations["concurrent_holders"])


def test_two_replicas_with_one_token() -> None:
    h = clean()
    h.record(S, 2, "r3", 9, 11, duplicates=3, incarnation="inc-1")
    report = h.check()
    assert kinds(report) == {"concurrent_holders"}
    assert any(
        "token 2 accepted from r2/inc-7, r3/inc-1" in m
        for m in report.violations["concurrent_holders"]
    )


def test_one_replica_two_incarnations_with_one_token() -> None:
    h = clean()
    h.record(S, 2, "r2", 9, 11, duplicates=3, incarnation="inc-8")
    assert "concurrent_holders" in kinds(h.check())


def test_run_started_by_another_replica_than_the_token_holder() -> None:
    h = clean()
    started = next(e for e in h.logs[S] if e["seq"] == "10")
    assert started["type"] == "run.started"
    started["data"] = orjson.dumps({"replica_id": "r9"}).decode()
    report = h.check()
    assert kinds(report) == {"concurrent_holders"}
    assert any("run.started by" in m for m in report.violations["concurrent_holders"])


def test_interleaved_holders() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.output", "run.output"])
    h.write(2, "r2", ["run.output", "run.output"])
    h.write(1, "r1", ["run.output", "run.completed"])  # r1 wrote again after r2 took over
    h.invoke("run_a")
    report = h.check()
    holders = report.violations["concurrent_holders"]
    assert any("token 2 (r2/inc-1) wrote seq 4..5 while token 1" in m for m in holders), holders
    assert "stale_write" in kinds(report)


def test_lost_acked_invoke() -> None:
    h = clean()
    h.invoke("run_lost")
    report = h.check()
    assert kinds(report) == {"lost_invoke"}
    assert "run_lost" in report.violations["lost_invoke"][0]


def test_interrupted_run_never_finished_is_lost() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.output"])
    h.write(2, "r2", ["run.interrupted"])
    h.invoke("run_a")
    report = h.check()
    assert kinds(report) == {"lost_invoke"}
    assert "1 run.interrupted, 0 terminal" in report.violations["lost_invoke"][0]


def test_acked_invoke_of_a_session_not_read_is_lost() -> None:
    h = clean()
    h.invoke("run_x", session="default/other")
    assert kinds(h.check()) == {"lost_invoke"}


def test_acked_invoke_without_run_id_is_a_violation() -> None:
    h = clean()
    h.invoke(None)
    assert kinds(h.check()) == {"lost_invoke"}


def test_unacked_invoke_without_a_run_is_fine() -> None:
    h = clean()
    h.invoke("run_never", acked=False)
    h.invoke(None, acked=False)
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["unacked_invokes"] == 3


def test_seq_gap() -> None:
    h = clean()
    del h.logs[S][4]
    report = h.check()
    assert "seq" in kinds(report)
    assert any("(gap)" in m for m in report.violations["seq"])
    # the audit said seq 5 was accepted: the log lost it
    assert any("seq 5 is not in the log" in m for m in report.violations["lost_entry"])


def test_duplicate_seq() -> None:
    h = clean()
    h.logs[S].insert(3, dict(h.logs[S][2]))
    report = h.check()
    assert kinds(report) == {"seq"}
    assert "duplicate or out of order" in report.violations["seq"][0]


def test_lost_tail_entries() -> None:
    h = clean()
    del h.logs[S][-2:]  # the log is 1..n and clean, but the audit accepted more
    report = h.check()
    assert kinds(report) == {"lost_entry", "lost_invoke"}
    assert "seq 10..11 is not in the log" in report.violations["lost_entry"][0]


@pytest.mark.parametrize("token", [2, 3])
def test_stale_refusal_needs_a_newer_current_token(token: int) -> None:
    h = clean()
    h.record(S, token, "r2", 12, 12, "stale_token", current_token=2)
    report = h.check()
    assert kinds(report) == {"stale_refusal"}
    assert report.stats["stale_refused"] == 2


def test_seq_gap_refusals_are_a_stat() -> None:
    h = clean()
    h.record(S, 2, "r2", 14, 14, "seq_gap")
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["seq_gap_refused"] == 1


def test_restarted_run_passes_history_but_not_exactly_once() -> None:
    h = clean()
    assert h.check().ok
    report = check_exactly_once(h.invokes, h.logs)
    assert kinds(report) == {"interrupted_run", "duplicate_run"}
    assert all("run_b" in m for v in report.violations.values() for m in v)


def test_exactly_once_clean() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.output", "run.completed"], "run_a")
    h.write(2, "r2", ["run.started", "run.completed"], "run_b")  # a clean move, no restart
    h.invoke("run_a")
    h.invoke("run_b")
    h.invoke("run_b")  # an idempotent repeat names the same run
    report = check_exactly_once(h.invokes, h.logs)
    assert report.ok, report.summary()
    assert report.stats["acked_invokes"] == 3


def test_exactly_once_flags_lost_and_unknown_runs() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.completed"], "run_a")
    h.write(1, "r1", ["run.started", "run.completed"], "run_ghost")
    h.write(1, "r1", ["run.cancelled"], "run_c")  # cancelled before it started: it never ran
    h.invoke("run_a")
    h.invoke("run_b")
    h.invoke("run_c")
    report = check_exactly_once(h.invokes, h.logs)
    assert kinds(report) == {"lost_invoke", "unknown_run"}
    lost = " ".join(report.violations["lost_invoke"])
    assert "run_b" in lost and "run_c" in lost
    assert "run_ghost" in report.violations["unknown_run"][0]
    # the invoke list is partial: runs nobody named are not the checker's business
    assert kinds(check_exactly_once(h.invokes, h.logs, complete=False)) == {"lost_invoke"}


def test_exactly_once_attributes_runs_to_invokes_without_run_id() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.completed"], "run_a")
    h.invoke(None, acked=False)  # the connection broke after the API took the input
    report = check_exactly_once(h.invokes, h.logs)
    assert report.ok, report.summary()
    assert report.stats["unattributed_runs"] == 1


def test_exactly_once_flags_a_duplicate_terminal() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.completed", "run.completed"], "run_a")
    h.invoke("run_a")
    assert kinds(check_exactly_once(h.invokes, h.logs)) == {"duplicate_run"}


def test_summary_caps_each_kind() -> None:
    report = CheckReport()
    for i in range(25):
        report.add("seq", f"problem {i}")
    report.add("lost_invoke", "one")
    report.count("sessions", 3)
    text = report.summary()
    assert not report.ok
    assert "FAILED, 26 violations (lost_invoke: 1, seq: 25)" in text
    assert "problem 19" in text and "problem 20" not in text
    assert "... and 5 more" in text
    assert "sessions=3" in text


def test_merge_sums_stats_and_keeps_violations() -> None:
    a, b = CheckReport(), CheckReport()
    a.count("sessions", 2)
    b.count("sessions", 1)
    b.add("seq", "x")
    m = a.merge(b)
    assert m.stats["sessions"] == 3 and m.violations == {"seq": ["x"]}
    assert a.ok and not m.ok


def test_log_checker_categories_match_the_moved_checker() -> None:
    log = [{"seq": "1", "token": "2"}, {"seq": "3", "token": "1"}]
    assert len(check_log_fencing(log)) == 2
    report = check_history([], [], {S: log})
    assert kinds(report) == {"seq", "stale_write"}


# -- property: random valid histories pass, mutated ones fail ---------------------------------


@st.composite
def valid_histories(draw: st.DrawFn, min_owners: int = 1) -> History:
    """Successive owners with increasing tokens (gaps: forced releases) write consecutive seqs
    in batches; some batches are retried (duplicates), some late writes of a superseded owner
    are refused stale, the audit arrives in any order."""
    h = History()
    n_owners = draw(st.integers(min_owners, 5))
    token = 0
    previous: tuple[int, str] | None = None
    for i in range(n_owners):
        token += draw(st.integers(1, 3))
        replica = draw(st.sampled_from(["r1", "r2", "r3"]))
        inc = f"inc-{i}"
        if previous is not None and draw(st.booleans()):
            seq = len(h.logs[S]) + 1
            h.record(S, previous[0], previous[1], seq, seq, "stale_token", current_token=token)
        for _ in range(draw(st.integers(1, 4))):
            size = draw(st.integers(1, 5))
            first, last = h.write(
                token, replica, ["run.output"] * size, f"run_{i}", incarnation=inc
            )
            if draw(st.booleans()):  # a retry after a lost answer
                h.record(S, token, replica, first, last, duplicates=size, incarnation=inc)
        previous = (token, replica)
    rng = random.Random(draw(st.integers(0, 2**32)))
    rng.shuffle(h.audit)
    return h


@settings(max_examples=200, deadline=None)
@given(valid_histories())
def test_random_valid_history_passes(h: History) -> None:
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["log_entries"] == len(h.logs[S])


@settings(max_examples=200, deadline=None)
@given(valid_histories(min_owners=2), st.data())
def test_lowering_a_token_after_a_higher_one_fails(h: History, data: st.DataObject) -> None:
    log = h.logs[S]
    lowest = min(int(e["token"]) for e in log)
    # an entry of a later owner, lowered to the first owner's token: a stale write (the log
    # shows it when a higher token precedes it, the audit's coverage always does)
    candidates = [i for i in range(len(log)) if int(log[i]["token"]) > lowest]
    i = data.draw(st.sampled_from(candidates))
    in_audit = data.draw(st.booleans())
    if in_audit:  # the audit says the old token's write was accepted there
        seq = int(log[i]["seq"])
        rec = next(
            r
            for r in h.audit
            if r["outcome"] == "accepted" and r["first_seq"] <= seq <= r["last_seq"]
        )
        rec["token"] = lowest
    else:
        log[i]["token"] = str(lowest)
    report = h.check()
    assert not report.ok
    assert "stale_write" in kinds(report) or "concurrent_holders" in kinds(report)


@settings(max_examples=200, deadline=None)
@given(valid_histories(), st.data())
def test_dropping_a_seq_fails(h: History, data: st.DataObject) -> None:
    log = h.logs[S]
    del log[data.draw(st.integers(0, len(log) - 1))]
    report = h.check()
    assert not report.ok
    assert kinds(report) <= {"seq", "lost_entry"}


# -- operator actions and poison inputs (issue 13) ---------------------------------------------

REASON = "chaos-force-release-1"
FORCED = {"reason": "force_release", "release_reason": REASON, "policy": "restart"}


def force_released(interrupted: dict[str, Any] | None = FORCED, *, rerun: bool = True) -> History:
    """r1 runs run_f; an operator force-releases it (reason REASON); r2 takes the session,
    writes run.interrupted (``interrupted``; None: none) and re-runs it (unless not)."""
    h = History()
    h.write(1, "r1", ["run.started", "run.output"], "run_f")
    h.actions.append(OperatorAction("force_release", S, 10, run_id="run_f", reason=REASON))
    if interrupted is not None:
        h.write(2, "r2", ["run.interrupted"], "run_f", data_of={"run.interrupted": interrupted})
    if rerun:
        h.write(2, "r2", ["run.started", "run.output", "run.completed"], "run_f")
    h.invoke("run_f")
    return h


def test_force_release_interrupted_with_the_operators_reason_passes() -> None:
    report = force_released().check()
    assert report.ok, report.summary()
    assert report.stats["force_release_interrupted"] == 1
    assert report.stats["action_force_release"] == 1


def test_force_release_recorded_as_owner_death_is_caught() -> None:
    h = force_released({"reason": "owner_death", "previous_replica_id": "r1"})
    report = h.check()
    assert kinds(report) == {"force_release_reason"}
    assert "'owner_death'" in report.violations["force_release_reason"][0]


def test_force_release_without_the_operators_text_is_caught() -> None:
    report = force_released({"reason": "force_release", "policy": "restart"}).check()
    assert kinds(report) == {"force_release_reason"}
    assert "without the text" in report.violations["force_release_reason"][0]


def test_force_release_that_strands_the_session_is_caught() -> None:
    report = force_released(None, rerun=False).check()
    assert kinds(report) == {"stranded", "force_release_reason"}
    assert "session had force_release" in report.violations["stranded"][0]
    assert "run_f" in report.violations["stranded"][0]


def test_force_release_with_no_live_owner_or_a_finished_run_expects_nothing() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.completed"], "run_f")  # ended before the release
    h.actions.append(OperatorAction("force_release", S, 10, run_id="run_f", reason=REASON))
    h.actions.append(OperatorAction("force_release", S, 11, run_id=None, reason="idle"))
    h.actions.append(OperatorAction("force_release", S, 12, run_id="run_f", held=False))
    h.invoke("run_f")
    report = h.check()
    assert report.ok, report.summary()
    assert report.stats["force_release_after_end"] == 1
    assert report.stats["force_release_idle"] == 2


def deleted(cancel_queued: bool) -> History:
    """run_d runs, run_q1 / run_q2 queue; DELETE; the deleted runs end run.cancelled."""
    h = History()
    h.write(1, "r1", ["run.started", "run.output"], "run_d")
    h.actions.append(OperatorAction("delete", S, 10, run_id="run_d"))
    h.write(2, "api", ["run.cancelled"], "run_d")
    h.write(2, "api", ["run.cancelled"], "run_q1")
    if cancel_queued:
        h.write(2, "api", ["run.cancelled"], "run_q2")
    for run in ("run_d", "run_q1", "run_q2"):
        h.invoke(run)
    return h


def test_delete_ending_every_acknowledged_run_passes() -> None:
    report = deleted(cancel_queued=True).check()
    assert report.ok, report.summary()
    assert report.stats["action_delete"] == 1


def test_delete_dropping_a_queued_input_is_stranded() -> None:
    report = deleted(cancel_queued=False).check()
    assert kinds(report) == {"stranded"}
    assert "run_q2" in report.violations["stranded"][0]
    assert "session had delete" in report.violations["stranded"][0]


def test_reset_leaves_the_old_generations_inputs_to_run() -> None:
    h = History()
    h.write(1, "r1", ["run.started", "run.output"], "run_r")
    h.actions.append(OperatorAction("reset", S, 10, run_id="run_r"))
    h.write(1, "r1", ["run.completed"], "run_r")
    h.invoke("run_r")
    h.invoke("run_q")  # queued behind run_r in the old generation: never ran
    report = h.check()
    assert kinds(report) == {"stranded"}
    assert "run_q" in report.violations["stranded"][0]


def test_a_second_terminal_entry_is_caught() -> None:
    h = clean()
    h.write(2, "r2", ["run.completed"], "run_c", incarnation="inc-7")
    report = h.check()
    assert kinds(report) == {"duplicate_terminal"}
    assert "run_c has 2 terminal entries" in report.violations["duplicate_terminal"][0]


def poisoned(
    owners: int = 3, end: str | None = "run.failed", error_type: str = "poison", deaths: int = 3
) -> History:
    """The poison run takes down ``owners`` owners (tokens 1..owners), then the next one ends
    it ``end`` (None: never); ``deaths`` runner exits outside the harness's faults."""
    h = History()
    for token in range(1, owners + 1):
        if token > 1:
            h.write(token, f"r{token}", ["run.interrupted"], "run_p")
        h.write(token, f"r{token}", ["run.started"], "run_p")
    if end is not None:
        token = owners + 1
        h.write(
            token,
            f"r{token}",
            ["run.interrupted", end],
            "run_p",
            data_of={end: {"error_type": error_type, "attempt": owners}},
        )
    h.actions.append(OperatorAction("poison", S, 10, run_id="run_p"))
    h.invoke("run_p")
    h.runner_deaths = deaths
    return h


def test_poison_failed_after_max_owners_passes() -> None:
    report = poisoned().check()
    assert report.ok, report.summary()
    assert report.stats["poison_failed"] == 1 and report.stats["runner_deaths_unplanned"] == 3
    assert report.stats["interrupted_outside_poison"] == 0


def test_poison_never_ended_is_caught() -> None:
    report = poisoned(owners=5, end=None, deaths=5).check()
    assert kinds(report) == {"poison", "stranded", "poison_spread"}
    assert "never ended" in report.violations["poison"][0]
    assert "5 runners died" in report.violations["poison_spread"][0]


def test_poison_ended_without_error_type_poison_is_caught() -> None:
    report = poisoned(error_type="handler_error").check()
    assert kinds(report) == {"poison"}
    assert "'handler_error'" in report.violations["poison"][0]
    report = poisoned(end="run.cancelled").check()
    assert kinds(report) == {"poison"}


def test_poison_redelivered_past_max_owners_is_caught() -> None:
    report = poisoned(owners=4, deaths=3).check()
    assert kinds(report) == {"poison"}
    assert "started 4 times" in report.violations["poison"][0]


def test_runner_deaths_without_poison_are_caught() -> None:
    h = clean()
    h.runner_deaths = 1
    assert kinds(h.check()) == {"runner_exit"}
