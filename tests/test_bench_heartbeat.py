"""Smoke test of ``streamward bench heartbeat`` (shape of its output; no timing assertions)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner

from api.bench.cli import app
from api.bench.heartbeat import TARGET_RATIO, main
from lua.server import RedisServer

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
    assert [h["leases_held"] for h in levels] == sorted({0, min(1000, leases), leases})
    for h in levels:
        assert h["us_per_call"] > 0
        # at least the renewReplica EVALSHA and the heartbeat ZADD, whatever is held
        assert h["commands"]["evalsha"] == 1 and h["commands"]["zadd"] == 1
        assert h["commands_per_tick"] == pytest.approx(sum(h["commands"].values()))
        assert "info" not in h["commands"]  # the measurement does not count itself
    per_tick = {h["commands_per_tick"] for h in levels}
    assert out["heartbeat_flat"] is (len(per_tick) == 1)
    assert out["heartbeat_flat"], f"heartbeat cost grows with leases held: {levels}"


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
    for text in ("renew_many", "Lock.extend", "ratio", "target >= 30", "leases held"):
        assert text in result.stdout


def test_bench_cli_json_output(redis_server: RedisServer) -> None:
    result = CliRunner().invoke(
        app, ["heartbeat", "--leases", "50", "-o", "json", "--redis-url", redis_server.url]
    )
    assert result.exit_code == 0, result.output
    _check_shape(orjson.loads(result.stdout), 50)


@pytest.mark.parametrize(("leases", "output"), [(0, "json"), (10, "yaml")])
def test_bench_rejects_bad_arguments(leases: int, output: str) -> None:
    assert main(leases=leases, output=output, redis_url="redis://127.0.0.1:1/0") == 2
