"""The runner asks the API once at start whether it will take its transcripts: a missing or
refused admin token exits 2 before any session is claimed; an API that is down is waited for."""

from __future__ import annotations

from typing import Any

import httpx

from streamward.lua.keys import Keys
from streamward.tools.fleet import Fleet
from streamward.tools.server import free_port, wait_ready
from tests.runner.helpers import RUNNER_ENV


def _exit_code(proc: Any, timeout_s: float = 30.0) -> int:
    return int(proc.popen.wait(timeout=timeout_s))


def _queued_invoke(url: str, sid: str) -> None:
    resp = httpx.post(
        f"{url}/v1/sessions/{sid}/invoke",
        json={"input": {"text": "hi"}, "mode": "detached"},
        timeout=30,
    )
    assert resp.status_code in (200, 202), resp.text


def test_missing_token_exits_2_before_claiming(fleet: Fleet, rc: Any) -> None:
    fleet.env.update(RUNNER_ENV)
    fleet.start_api(env={"STREAMWARD_START_TIMEOUT_S": "0"})  # answer `queued` at once
    # an input waits: a runner that started claiming would take its session
    _queued_invoke(fleet.api_url, "waiting")
    proc = fleet.start_runner("tokenless", env={"STREAMWARD_ADMIN_TOKEN": ""}, wait_s=0)
    assert _exit_code(proc) == 2
    log = proc.log()
    assert "no admin token" in log and "--admin-token" in log
    assert "Traceback" not in log
    keys = Keys()
    assert not rc.exists(keys.session("default", "waiting").lease)  # nothing claimed
    assert not rc.exists(keys.replica("tokenless").lease)  # never registered


def test_wrong_token_exits_2(api_fleet: Fleet) -> None:
    proc = api_fleet.start_runner("wrong", args=["--admin-token", "not-the-token"], wait_s=0)
    assert _exit_code(proc) == 2
    assert "refused this runner's admin token (403 invalid_token)" in proc.log()


def test_flag_token_works_and_down_api_is_waited_for(fleet: Fleet) -> None:
    fleet.env.update(RUNNER_ENV)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = fleet.admin_token
    # no API yet: the runner waits (the env token is blanked; the flag supplies it)
    proc = fleet.start_runner(
        "patient",
        args=["--admin-token", token],
        env={"STREAMWARD_ADMIN_TOKEN": ""},
        api_url=url,
        wait_s=0,
    )
    wait_ready(lambda: "API not reachable yet" in proc.log(), what="the wait line", timeout_s=30)
    assert proc.alive()
    fleet.start_api(port=port)
    fleet.wait_replica(proc, "patient", wait_s=30)
    acc = httpx.post(f"{url}/v1/sessions/s1/invoke", json={"input": {"text": "x"}}, timeout=30)
    assert acc.status_code == 200
    assert '"run.completed"' in acc.text or "run.completed" in acc.text
    assert proc.alive()
