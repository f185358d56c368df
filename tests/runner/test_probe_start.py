"""The runner probes Redis before registering: it refuses a Redis without Lua scripting."""

from __future__ import annotations

import subprocess
import sys

from streamward.tools.server import RedisServer

NO_SCRIPTING = ["--rename-command", "EVAL", "", "--rename-command", "EVALSHA", ""]


def _runner(redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamward.tools", "runner", "--replica-id", "probe-test",
         "--redis-url", redis_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_runner_exits_2_with_the_reason_when_scripting_is_disabled() -> None:
    with RedisServer(extra_args=NO_SCRIPTING) as server:
        done = _runner(server.url)
    assert done.returncode == 2, done
    assert "Lua scripting is unavailable (unknown command 'EVAL')" in done.stderr
