"""The peer selection and the comparison of ``streamward bench invoke`` (bench/peers.py); the
peers themselves run end to end in tests/test_bench_invoke.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import pytest

from streamward.tools.bench import peers
from streamward.tools.bench.invoke import Latency


def test_select_defaults_to_every_peer_and_skips_the_missing_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_celery(name: str, *a: Any) -> Any:
        return None if name == "celery" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", without_celery)
    run, skipped = peers.select(None)
    assert "celery" not in {p.name for p in run}
    assert set(skipped) == {"celery"} and "not installed" in skipped["celery"]
    run, skipped = peers.select(["saq,celery"])
    assert [p.name for p in run] == ["saq"] and set(skipped) == {"celery"}


def test_select_none_and_unknown() -> None:
    assert peers.select(["none"]) == ([], {})
    with pytest.raises(ValueError, match="unknown peer"):
        peers.select(["saq", "rq"])


def test_an_unknown_peer_is_a_usage_error_before_anything_starts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamward.tools", "bench", "invoke", "--peers", "rq"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "unknown peer(s) rq" in out.stderr


def _lat(ms: float) -> Latency:
    return Latency.of([ms / 1000] * 10)


def _peer(name: str, warm_ms: float, p99_ms: float, cold_ms: float, per_s: float) -> Any:
    warm = Latency.of([warm_ms / 1000] * 98 + [p99_ms / 1000] * 2)
    return peers.PeerResult(name, name, "1.0", 2, 1, warm, _lat(cold_ms), None, per_s)


def test_compare_takes_the_best_peer_of_each_figure_and_fills_every_peers_ratios() -> None:
    fast = _peer("saq", warm_ms=20, p99_ms=50, cold_ms=30, per_s=2000)
    steady = _peer("celery", warm_ms=40, p99_ms=45, cold_ms=25, per_s=2500)
    sw_warm = Latency.of([0.030] * 98 + [0.054] * 2)
    out = peers.compare(sw_warm, _lat(50), 1500.0, [fast, steady])
    assert out["warm_p50"]["peer"] == "saq" and out["warm_p50"]["ratio"] == 1.5
    assert out["warm_p50"]["met"] is False
    # p99 against the lowest p99 (celery's 45), allowed 1.2x: 54 ms is just within
    assert out["warm_p99"]["peer"] == "celery" and out["warm_p99"]["met"] is True
    assert out["started_per_s"]["peer"] == "celery" and out["started_per_s"]["ratio"] == 0.6
    assert out["cold_p50"]["peer"] == "celery" and out["cold_p50"]["met"] is None
    assert out["cold_over_warm_p50"] == {
        "streamward": round(50 / 30, 3),
        "target": "≤ 2x",
        "met": True,
    }
    assert fast.ratios["warm_p50"] == 1.5 and steady.ratios["warm_p50"] == 0.75
    assert steady.ratios["started_per_s"] == 0.6
    assert peers.compare(sw_warm, _lat(50), 1500.0, []) == {}
