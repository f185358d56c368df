"""The console script as a newcomer meets it: --version, help without noise, one-line
settings errors, port conflicts, the API's "listening on" line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib import metadata

import pytest

from streamward.tools.fleet import Fleet
from streamward.tools.server import free_port, wait_ready


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "streamward.tools", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def test_version() -> None:
    res = cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"streamward {metadata.version('streamward')}"


@pytest.mark.parametrize("command", [["api"], ["runner"], ["locks", "release"], ["dev"]])
def test_help_shows_defaults_and_no_bool_metavars(command: list[str]) -> None:
    res = cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert "<bool>" not in res.stdout
    assert " ." not in res.stdout.replace("...", "")  # no help text eaten by markup
    if command == ["api"]:
        assert "default 127.0.0.1" in res.stdout and "default 8700" in res.stdout
        assert "STREAMWARD_HOST" in res.stdout
    if command == ["runner"]:
        assert "[type=]module:callable" in res.stdout


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["api"], {"STREAMWARD_PORT": "abc"}, "--port / STREAMWARD_PORT"),
        (["runner"], {"STREAMWARD_MAX_SESSIONS": "0"}, "--max-sessions / STREAMWARD_MAX_SESSIONS"),
        (["probe", "--mode", "clustr"], {}, "--mode / STREAMWARD_REDIS_MODE"),
        (["archiver"], {"STREAMWARD_ARCHIVE_BATCH_ENTRIES": "-1"}, "ARCHIVE_BATCH_ENTRIES"),
    ],
)
def test_settings_errors_are_one_line(args: list[str], env: dict[str, str], names: str) -> None:
    env = {"STREAMWARD_DATABASE_URL": "postgresql://127.0.0.1:1/x", **env}
    res = cli(*args, env=env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: invalid setting: ") and names in lines[0]
    assert "pydantic" not in res.stderr and "Traceback" not in res.stderr


def test_api_port_in_use_is_one_line() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = cli("api", "--port", str(port))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"error: port {port} is in use (another streamward or another server?). Pick "
        f"another with `streamward api --port {port + 1}`, or stop what holds it."
    )


def test_api_says_where_it_listens(fleet: Fleet) -> None:
    port = free_port()
    proc = fleet.start_api(port=port)  # default log level: warning
    wait_ready(
        lambda: f"api listening on http://127.0.0.1:{port}" in proc.log(),
        what="the listening line",
        timeout_s=30,
    )
