"""The fencing checker itself: it must flag every kind of bad log (it guards the chaos suite)."""

from __future__ import annotations

from typing import Any

import pytest

from streamward.lua.streams import LogEntry
from tests.fencing import check_log_fencing


def log(*pairs: tuple[int, int]) -> list[dict[str, Any]]:
    return [{"seq": s, "token": t, "type": "run.output", "run_id": "r"} for s, t in pairs]


def test_clean_log_passes() -> None:
    assert check_log_fencing(log((1, 1), (2, 1), (3, 2), (4, 2), (5, 7))) == []
    assert check_log_fencing([]) == []


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        (log((1, 1), (3, 1)), "gap"),
        (log((2, 1), (3, 1)), "expected 1 (gap)"),
        (log((1, 1), (2, 1), (2, 1)), "duplicate"),
        (log((1, 1), (3, 1), (2, 1)), "gap"),
        (log((1, 2), (2, 1)), "stale write: seq 2"),
        (log((1, 3), (2, 3), (3, 2), (4, 3)), "token 2 after seq 2 with token 3"),
        (log((1, 0)), "token 0 < 1"),
    ],
)
def test_violations_are_reported(entries: list[dict[str, Any]], needle: str) -> None:
    problems = check_log_fencing(entries, "default/s1")
    assert problems, entries
    assert any(needle in p for p in problems), problems
    assert all(p.startswith("default/s1: ") for p in problems)


def test_each_anomaly_is_reported_once() -> None:
    problems = check_log_fencing(log((1, 1), (2, 1), (3, 1), (2, 1), (4, 1), (5, 1)))
    assert len(problems) == 1 and "duplicate" in problems[0]


def test_accepts_stored_entries_and_redis_pairs() -> None:
    stored = [
        LogEntry(i, "run.output", run_id="r", token=1, ts_ms=0, id=f"{i}-0") for i in (1, 2, 4)
    ]
    assert len(check_log_fencing(stored)) == 1
    pairs = [("1-0", {"seq": "1", "token": "5"}), ("2-0", {"seq": "2", "token": "4"})]
    assert "stale write" in check_log_fencing(pairs)[0]
