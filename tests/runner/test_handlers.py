"""The built-in echo handler (exact behaviour), handler loading and the CLI around it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamward.lua.keys import Keys
from streamward.lua.streams import Streams
from streamward.runner.context import RunContext
from streamward.runner.handlers import EchoFailed, HandlerLoadError, echo, load_handler
from streamward.tools.runner_cli import app


def _ctx() -> RunContext:
    return RunContext(
        session_id="s",
        project="default",
        run_id="run_1",
        token=1,
        attempt=1,
        replica_id="r",
        started_seq=1,
        session=Keys().session("default", "s"),
        streams=Streams(None),  # type: ignore[arg-type]  # echo never reads the transcript
    )


async def _collect(input: Any) -> tuple[list[Any], BaseException | None]:
    out: list[Any] = []
    try:
        async for item in echo(_ctx(), input):
            out.append(item)
    except Exception as exc:
        return out, exc
    return out, None


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Record echo's sleeps instead of sleeping."""
    calls: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        calls.append(seconds)

    # echo sleeps through the asyncio module; the test's event loop does not use sleep()
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    yield calls


async def test_echo_defaults(sleeps: list[float]) -> None:
    assert await _collect({}) == ([{"text": "", "i": 0}], None)
    assert sleeps == [0.0]


async def test_echo_chunks_text_and_delay_before_each(sleeps: list[float]) -> None:
    out, err = await _collect({"text": "hi", "chunks": 3, "delay_ms": 250})
    assert err is None
    assert out == [{"text": "hi", "i": 0}, {"text": "hi", "i": 1}, {"text": "hi", "i": 2}]
    assert sleeps == [0.25, 0.25, 0.25]


async def test_echo_zero_chunks_yields_nothing(sleeps: list[float]) -> None:
    assert await _collect({"chunks": 0}) == ([], None)


async def test_echo_fail_raises_after_the_last_chunk(sleeps: list[float]) -> None:
    out, err = await _collect({"text": "x", "chunks": 2, "fail": True})
    assert out == [{"text": "x", "i": 0}, {"text": "x", "i": 1}]
    assert isinstance(err, EchoFailed)


async def test_echo_ignores_unknown_fields(sleeps: list[float]) -> None:
    assert await _collect({"text": "a", "extra": [1]}) == ([{"text": "a", "i": 0}], None)


@pytest.mark.parametrize("bad", [None, [1, 2], "text", 3, True])
async def test_echo_non_object_input_fails_clearly(bad: Any, sleeps: list[float]) -> None:
    out, err = await _collect(bad)
    assert out == []
    assert isinstance(err, TypeError)
    assert "must be a JSON object" in str(err)


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("text", 1, TypeError),
        ("chunks", "3", TypeError),
        ("chunks", True, TypeError),
        ("chunks", 1.5, TypeError),
        ("chunks", -1, ValueError),
        ("delay_ms", -5, ValueError),
        ("delay_ms", None, TypeError),
        ("fail", "yes", TypeError),
    ],
)
async def test_echo_rejects_bad_fields(
    field: str, value: Any, kind: type[Exception], sleeps: list[float]
) -> None:
    out, err = await _collect({field: value})
    assert out == []
    assert isinstance(err, kind)
    assert repr(field) in str(err)


async def test_echo_really_sleeps() -> None:
    t0 = time.monotonic()
    out = [x async for x in echo(_ctx(), {"chunks": 2, "delay_ms": 50})]
    assert len(out) == 2
    assert time.monotonic() - t0 >= 0.09


def test_load_handler_finds_echo() -> None:
    assert load_handler("streamward.runner.handlers:echo") is echo


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("streamward.runner.handlers", "expected 'module:callable'"),
        (":echo", "expected 'module:callable'"),
        ("no_such_module_xyz:run", "cannot import module 'no_such_module_xyz'"),
        ("streamward.runner.handlers:nope", "has no attribute 'nope'"),
        ("streamward.lua.keys:DEFAULT_PREFIX", "is a str, not callable"),
    ],
)
def test_load_handler_errors(spec: str, message: str) -> None:
    with pytest.raises(HandlerLoadError, match=message):
        load_handler(spec)


def test_load_handler_reports_a_broken_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_handler_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerLoadError, match="RuntimeError: boom at import"):
        load_handler("broken_handler_mod:run")


def test_runner_command_exits_2_on_a_bad_handler() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamward.tools",
            "runner",
            "--replica-id",
            "x",
            "--handler",
            "nope_mod:f",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREAMWARD_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert proc.returncode == 2
    assert "cannot import module 'nope_mod'" in proc.stderr


def test_runner_command_exits_2_on_a_bad_replica_id() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamward.tools", "runner", "--replica-id", "bad id!"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "replica_id" in proc.stderr


def test_check_fresh_stale_and_missing_heartbeat(tmp_path: Path) -> None:
    runner = CliRunner()
    hb = tmp_path / "hb"
    missing = runner.invoke(app, ["check", "--heartbeat-file", str(hb)])
    assert missing.exit_code == 1 and "no heartbeat file" in missing.output
    hb.touch()
    fresh = runner.invoke(app, ["check", "--heartbeat-file", str(hb), "--max-age-ms", "5000"])
    assert fresh.exit_code == 0, fresh.output
    old = time.time() - 10
    os.utime(hb, (old, old))
    stale = runner.invoke(app, ["check", "--heartbeat-file", str(hb), "--max-age-ms", "5000"])
    assert stale.exit_code == 1 and "unhealthy" in stale.output


def test_check_uses_replica_id_and_ttl_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("STREAMWARD_REPLICA_ID", "pod-7")
    monkeypatch.setenv("STREAMWARD_REPLICA_TTL_MS", "3000")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    hb = tmp_path / "streamward-runner-pod-7.heartbeat"
    hb.touch()
    runner = CliRunner()
    assert runner.invoke(app, ["check"]).exit_code == 0
    old = time.time() - 4
    os.utime(hb, (old, old))
    assert runner.invoke(app, ["check"]).exit_code == 1


def test_check_needs_a_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STREAMWARD_REPLICA_ID", "POD_NAME", "STREAMWARD_HEARTBEAT_FILE"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 2


def test_check_does_not_touch_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an unreachable Redis must not matter to the liveness probe
    monkeypatch.setenv("STREAMWARD_REDIS_URL", "redis://127.0.0.1:1/0")
    hb = tmp_path / "hb"
    hb.touch()
    result = CliRunner().invoke(app, ["check", "--heartbeat-file", str(hb)])
    assert result.exit_code == 0


# -- session hosts (lifecycle.py) ----------------------------------------------------------


def test_load_handler_accepts_a_session_host_class() -> None:
    from streamward.runner.lifecycle import FunctionHost, host_factory
    from tests.runner.hosts import Counter

    loaded = load_handler("tests.runner.hosts:Counter")
    assert loaded is Counter
    make = host_factory(loaded)
    first, second = make(), make()
    assert isinstance(first, Counter) and first is not second  # one per activation
    wrapped = host_factory(echo)()
    assert isinstance(wrapped, FunctionHost) and wrapped.fn is echo and not wrapped.hosted


@pytest.mark.parametrize(
    ("taken_over", "meta", "reason"),
    [
        (False, {}, "new"),
        (False, {"status": "active"}, "new"),  # never hosted
        (False, {"hosted_by": "r1|i|1", "released_by": "idle"}, "rehydrate"),
        (False, {"hosted_by": "r1|i|1", "released_by": "failed"}, "rehydrate"),
        (False, {"hosted_by": "r1|i|1", "released_by": "drain"}, "handoff"),
        (False, {"hosted_by": "r1|i|1", "released_by": ""}, "takeover"),  # never released
        (True, {"hosted_by": "r1|i|1", "released_by": "drain"}, "takeover"),
        (True, {}, "takeover"),
    ],
)
def test_activation_reason(taken_over: bool, meta: dict[str, str], reason: str) -> None:
    from streamward.runner.lifecycle import activation_reason

    assert activation_reason(taken_over, meta) == reason
