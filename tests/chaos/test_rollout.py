"""A rolling update of 4 runners under load (api/bench/rollout.py): nothing lost, nothing run
twice, every old runner replaced, and the update really cut through running work."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamward.tools.bench.rollout import Swap, _transcript_figures, main, run_rollout


@pytest.mark.timeout(240)
def test_rolling_update_is_exactly_once(tmp_path: Path) -> None:
    res = run_rollout(runners=4, before_s=5.0, after_s=2.0, rate_per_s=20.0, workdir=str(tmp_path))
    where = f"(fleet logs and ingest audit in {res.workdir})"

    # zero lost, zero duplicated, fencing held
    assert res.exactly_once.ok, f"{res.exactly_once.summary()}\n{where}"
    assert res.history.ok, f"{res.history.summary()}\n{where}"
    # every caller got its answer: an unacknowledged invoke proves nothing either way
    assert all(r.acked for r in res.records), where
    assert res.phases["rollout"].acked > 0

    # all 4 old runners replaced: drained and exited 0, their replica ids gone, 4 new alive
    assert [s.exit_code for s in res.swaps] == [0, 0, 0, 0], where
    assert res.old_left == [], where
    assert sorted(res.new_alive) == ["new-1", "new-2", "new-3", "new-4"], where

    # the rollout overlapped real work: runs were going on an old runner at its SIGTERM and
    # finished there during the drain (from the transcripts, independent of runner logs),
    # and sessions moved from old runners to new ones
    assert sum(s.drained_runs for s in res.swaps) > 0, res.swaps
    assert res.handed_over > 0, where

    # the figures the bench prints exist for both phases
    for name in ("steady", "rollout"):
        p = res.phases[name]
        assert p.invokes > 0 and p.p99_ms is not None and p.max_ms is not None
    assert res.added_p99_ms is not None and res.added_max_ms is not None


def _entry(
    seq: int, etype: str, run_id: str, token: int, ts_ms: int, rep: str = ""
) -> dict[str, str]:
    data = f'{{"replica_id": "{rep}"}}' if etype == "run.started" else "{}"
    return {
        "seq": str(seq),
        "type": etype,
        "run_id": run_id,
        "token": str(token),
        "data": data,
        "ts": str(ts_ms),
    }


def test_transcript_figures_count_drained_runs_late_starts_and_handovers() -> None:
    swap = Swap("old-1", "new-1", 1.0, sigterm_ns=10_000 * 1_000_000)
    logs = {
        "default/a": [
            _entry(1, "run.started", "r1", 1, 9_900, "old-1"),  # in flight at SIGTERM
            _entry(2, "run.completed", "r1", 1, 10_100),  # finished during the drain
            _entry(3, "run.started", "r2", 1, 10_010, "old-1"),  # put just before the signal
            _entry(4, "run.completed", "r2", 1, 10_050),
            _entry(5, "run.started", "r3", 2, 10_200, "new-1"),  # the session moved
            _entry(6, "run.completed", "r3", 2, 10_300),
        ],
        "default/b": [
            _entry(1, "run.started", "r4", 1, 9_000, "old-1"),
            _entry(2, "run.completed", "r4", 1, 9_500),  # done before SIGTERM
            _entry(3, "run.started", "r5", 1, 11_000, "old-1"),  # decided while draining
            _entry(4, "run.completed", "r5", 1, 11_100),
        ],
    }
    assert _transcript_figures(logs, [swap], {"new-1"}) == 1
    assert swap.drained_runs == 1
    assert swap.started_after_sigterm == 1


def test_main_refuses_bad_arguments() -> None:
    assert main(output="xml") == 2
    assert main(runners=0) == 2
    assert main(stream_fraction=2.0) == 2
