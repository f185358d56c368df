"""The capability probe at API start, in /readyz, and as ``streamward probe``."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from typer.testing import CliRunner

from streamward.lua.probe import ProbeError
from streamward.tools.cli import app as cli_app
from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer, free_port
from tests.api.conftest import SettingsFactory, asgi_client, running_app

NO_SCRIPTING = ["--rename-command", "EVAL", "", "--rename-command", "EVALSHA", ""]


@pytest.fixture(scope="module")
def no_scripting() -> Iterator[RedisServer]:
    with RedisServer(extra_args=NO_SCRIPTING) as server:
        yield server


async def test_api_refuses_to_start_on_redis_without_scripting(
    make_settings: SettingsFactory, no_scripting: RedisServer
) -> None:
    with pytest.raises(ProbeError, match="Lua scripting is unavailable"):
        async with running_app(make_settings(redis_url=no_scripting.url)):
            pass


def test_api_process_exits_with_the_reason(no_scripting: RedisServer) -> None:
    with Fleet(no_scripting.url) as fleet:
        with pytest.raises(RuntimeError, match="API exited at start") as err:
            fleet.start_api(wait_s=30)
        assert "Lua scripting is unavailable (unknown command 'EVAL')" in str(err.value)
        assert fleet.procs[0].popen.returncode not in (None, 0)


async def test_readyz_reports_a_redis_that_appears_later_without_scripting(
    make_settings: SettingsFactory,
) -> None:
    port = free_port()
    async with (
        running_app(make_settings(redis_url=f"redis://127.0.0.1:{port}/0")) as app,
        asgi_client(app) as client,
    ):
        # Redis down at start: the app starts, /livez ok, /readyz 503
        assert (await client.get("/livez")).status_code == 200
        down = await client.get("/readyz")
        assert down.status_code == 503 and "redis unreachable" in down.json()["detail"]
        with RedisServer(port, extra_args=NO_SCRIPTING):
            bad = await client.get("/readyz")
            assert bad.status_code == 503
            assert bad.json()["code"] == "not_ready"
            assert "Lua scripting is unavailable" in bad.json()["detail"]
            assert app.state.sw.capabilities is None


async def test_readyz_records_what_the_probe_found(
    make_settings: SettingsFactory, redis_server: RedisServer
) -> None:
    async with running_app(make_settings()) as app, asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        found = app.state.sw.capabilities
        assert found is not None and found.ok and found.scripting
        assert found.server_mode == "standalone"


cli = CliRunner()


def test_probe_command(redis_server: RedisServer, no_scripting: RedisServer) -> None:
    ok = cli.invoke(cli_app, ["probe", "--redis-url", redis_server.url])
    assert ok.exit_code == 0, ok.output
    assert "standalone" in ok.stdout and "scripting ok" in ok.stdout
    as_json = cli.invoke(
        cli_app, ["probe", "-o", "json"], env={"STREAMWARD_REDIS_URL": redis_server.url}
    )
    assert as_json.exit_code == 0, as_json.output
    doc = orjson.loads(as_json.stdout)
    assert doc["ok"] is True and doc["scripting"] is True and doc["mode"] == "standalone"
    bad = cli.invoke(cli_app, ["probe", "--redis-url", no_scripting.url])
    assert bad.exit_code == 1
    assert "Lua scripting is unavailable" in bad.stderr
    bad_json = cli.invoke(cli_app, ["probe", "--redis-url", no_scripting.url, "-o", "json"])
    assert bad_json.exit_code == 1
    assert orjson.loads(bad_json.stdout)["scripting"] is False
    down = cli.invoke(cli_app, ["probe", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"])
    assert down.exit_code == 2 and "cannot reach redis" in down.stderr
    invalid = cli.invoke(cli_app, ["probe", "--mode", "sentinel"])
    assert invalid.exit_code == 2 and "at least one sentinel" in invalid.stderr
