"""Smoke test of ``streamward bench heartbeat`` (shape of its output; no timing assertions)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner

from streamward.lua.leases import RENEW_CHUNK
from streamward.tools.bench.cli import app
from streamward.tools.bench.heartbeat import TARGET_RATIO, levels_for, main
from streamward.tools.server import RedisServer

LEASES = 500


def _dbsize(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def _check_shape(out: dict[str, Any], leases: int) -> None:
    assert out["bench"] == "heartbeat"
    assert out["leases"] == leases
    batch, lock = out["batch"], out["lock_extend"]
    assert batch["renewals"] == lock["renewals"] == leases
    assert batch["rounds"] >= 1
    assert batch["renewals_per_s"] > 0 and lock["renewals_per_s"] > 0
    assert batch["seconds_median"] > 0 and lock["seconds"] > 0
    # the reported figures are consistent with each other
    assert batch["renewals_per_s"] == pytest.approx(leases / batch["seconds_median"])
    assert lock["renewals_per_s"] == pytest.approx(leases / lock["seconds"])
    assert out["ratio"] == pytest.approx(batch["renewals_per_s"] / lock["renewals_per_s"])
    assert out["target_ratio"] == TARGET_RATIO
    assert out["target_met"] is (out["ratio"] >= TARGET_RATIO)
    levels = out["heartbeat"]
    assert [h["leases_held"] for h in levels] == levels_for(leases)
    for h in levels:
        assert h["us_per_call"] > 0
        assert 0 < h["us_p50"] <= h["us_p99"]
        assert h["ping_ratio"] == pytest.approx(h["us_p50"] / out["ping_us"])
        # at least the renewReplica EVALSHA and the heartbeat ZADD, whatever is held
        assert h["commands"]["evalsha"] == 1 and h["commands"]["zadd"] == 1
        assert h["commands_per_tick"] == pytest.approx(sum(h["commands"].values()))
        assert "info" not in h["commands"]  # the measurement does not count itself
    per_tick = {h["commands_per_tick"] for h in levels}
    assert out["heartbeat_flat"] is (len(per_tick) == 1)
    assert out["heartbeat_flat"], f"heartbeat cost grows with leases held: {levels}"
    _check_baselines(out, leases)
    _check_memory(out["memory"], leases)


def _check_baselines(out: dict[str, Any], leases: int) -> None:
    """python-redis-lock beside redis-py, and every method at every level held."""
    prl = out["python_redis_lock"]
    assert "python-redis-lock" in prl["method"]
    assert prl["renewals"] == leases and prl["seconds"] > 0
    assert prl["renewals_per_s"] == pytest.approx(leases / prl["seconds"])
    ratio = out["ratio_python_redis_lock"]
    assert ratio == pytest.approx(out["batch"]["renewals_per_s"] / prl["renewals_per_s"])
    assert out["target_met_python_redis_lock"] is (ratio >= TARGET_RATIO)
    assert out["ping_us"] > 0
    scaling = out["levels"]
    assert [lv["leases_held"] for lv in scaling] == levels_for(leases)[1:]
    assert scaling[-1]["batch"]["renewals_per_s"] == pytest.approx(out["batch"]["renewals_per_s"])
    for lv in scaling:
        n = lv["leases_held"]
        batch, lock, prl = lv["batch"], lv["lock_extend"], lv["python_redis_lock"]
        for p in (batch, lock, prl):
            assert p["renewals"] == n and p["renewals_per_s"] > 0
            assert p["redis_cpu_s"] >= 0
            assert p["commands_per_round"] == pytest.approx(sum(p["commands"].values()))
            assert "info" not in p["commands"]
        # exact command counts: one script call per chunk vs one per lock, each check + expire
        chunks = -(-n // RENEW_CHUNK)
        assert batch["round_trips"] == 1
        assert batch["commands"] == {"evalsha": chunks, "time": chunks, "hget": n, "pexpire": n}
        assert lock["round_trips"] == prl["round_trips"] == n
        assert lock["commands"] == {"evalsha": n, "get": n, "pttl": n, "pexpire": n}
        assert prl["commands"] == {"evalsha": n, "get": n, "ttl": n, "expire": n}
        assert lv["ratio"] == pytest.approx(batch["renewals_per_s"] / lock["renewals_per_s"])
        assert lv["ratio_python_redis_lock"] == pytest.approx(
            batch["renewals_per_s"] / prl["renewals_per_s"]
        )
        steady = lv["steady_state"]
        interval = steady["lease_renew_interval_s"]
        assert steady["lock_extend"]["round_trips_per_s"] == pytest.approx(n / interval)
        assert steady["batch"]["round_trips_per_s"] == pytest.approx(
            1 / interval + 1 / steady["replica_heartbeat_interval_s"]
        )


def _check_memory(mem: dict[str, Any], leases: int) -> None:
    assert mem["leases_held"] == leases
    assert 1 <= mem["sampled_keys"] <= leases
    for k in ("lease_hash_bytes", "epoch_bytes", "index_set_bytes", "lock_key_bytes"):
        assert mem[k] > 0, k
    assert mem["index_share_bytes"] == pytest.approx(mem["index_set_bytes"] / leases)
    parts = mem["lease_hash_bytes"] + mem["epoch_bytes"] + mem["index_share_bytes"]
    assert mem["per_lease_bytes"] == pytest.approx(parts)
    assert mem["ratio_vs_lock"] == pytest.approx(mem["per_lease_bytes"] / mem["lock_key_bytes"])
    assert mem["ratio_vs_python_redis_lock"] == pytest.approx(
        mem["per_lease_bytes"] / mem["python_redis_lock_key_bytes"]
    )


def test_bench_json_against_given_redis(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _dbsize(redis_server.url)
    assert main(leases=LEASES, output="json", redis_url=redis_server.url) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1, "-o json prints exactly one JSON object"
    out = orjson.loads(stdout)
    _check_shape(out, LEASES)
    assert out["redis_url"] == redis_server.url
    assert _dbsize(redis_server.url) == before, "the bench left keys behind"


def test_bench_cli_table_output(redis_server: RedisServer) -> None:
    result = CliRunner().invoke(
        app, ["heartbeat", "--leases", "120", "--redis-url", redis_server.url]
    )
    assert result.exit_code == 0, result.output
    for text in (
        "renew_many",
        "Lock.extend",
        "python-redis-lock",
        "ratio",
        "target >= 30",
        "leases held",
        "Memory per session lease",
    ):
        assert text in result.stdout


def test_levels_for() -> None:
    assert levels_for(100_000) == [0, 1_000, 10_000, 100_000]
    assert levels_for(2_000) == [0, 1_000, 2_000]
    assert levels_for(1_000) == [0, 1_000]
    assert levels_for(50) == [0, 50]


def test_bench_cli_json_output(redis_server: RedisServer) -> None:
    result = CliRunner().invoke(
        app, ["heartbeat", "--leases", "50", "-o", "json", "--redis-url", redis_server.url]
    )
    assert result.exit_code == 0, result.output
    _check_shape(orjson.loads(result.stdout), 50)


@pytest.mark.parametrize(("leases", "output"), [(0, "json"), (10, "yaml")])
def test_bench_rejects_bad_arguments(leases: int, output: str) -> None:
    assert main(leases=leases, output=output, redis_url="redis://127.0.0.1:1/0") == 2
