"""Session types against real processes: two types on two runners under load and a kill -9
(every run on a runner of its type), a type nobody serves stays queued and says so, the
invoke's type check, and the handler loader's one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from streamward.runner.handlers import HandlerLoadError, load_handlers, parse_handler_specs
from streamward.tools.fleet import Fleet
from tests.runner.helpers import KEYS, invoke, run_done, terminal, transcript, wait_until

HANDLERS = {"alpha": "tests.runner.typed_hosts:alpha", "beta": "tests.runner.typed_hosts:beta"}
ENV = {"STREAMWARD_SWEEP_INTERVAL_S": "0.5"}


def _runner(fleet: Fleet, rid: str, *types: str) -> Any:
    args = [a for t in types for a in ("--handler", f"{t}={HANDLERS[t]}")]
    return fleet.start_runner(rid, args=args, env=ENV)


def _started_by(rc: Any, sid: str) -> list[str]:
    return [e.data["replica_id"] for e in transcript(rc, sid) if e.type == "run.started"]


def test_two_types_under_load_and_a_kill_9_run_only_on_their_type(
    api_fleet: Fleet, rc: Any
) -> None:
    served = {"ra": "alpha", "rb": "beta", "ra2": "alpha"}
    ra = _runner(api_fleet, "ra", "alpha")
    _runner(api_fleet, "rb", "beta")
    runs: dict[tuple[str, str], str] = {}  # (session, type) -> run id
    for i in range(40):
        t = "alpha" if i % 2 else "beta"
        sid = f"{t}-{i % 10}"
        acc = invoke(api_fleet.api_url, sid, {"delay_s": 0.05}, type=t)
        runs[(sid, acc["run_id"])] = t
        if i == 20:
            ra.kill()  # kill -9 mid-load: alpha's sessions wait for an alpha runner
            _runner(api_fleet, "ra2", "alpha")
    for (sid, run_id), _t in runs.items():
        done = wait_until(run_done(rc, sid, run_id), 40, run_id)
        assert done.type == "run.completed", done
    for sid in {s for s, _ in runs}:
        t = sid.split("-")[0]
        owners = _started_by(rc, sid)
        assert owners and all(served[o] == t for o in owners), (sid, owners)
        outputs = [e.data["host"] for e in transcript(rc, sid) if e.type == "run.output"]
        assert set(outputs) == {t}
        assert rc.hget(KEYS.session("default", sid).meta, "type") == t


def test_unserved_type_stays_queued_until_a_runner_of_it_starts(api_fleet: Fleet, rc: Any) -> None:
    _runner(api_fleet, "ra", "alpha")
    acc = invoke(api_fleet.api_url, "lonely", {}, type="beta")
    assert acc["status"] == "queued"

    def live() -> dict[str, Any]:
        r = httpx.get(f"{api_fleet.api_url}/v1/sessions/lonely/liveness", timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    body = live()
    assert body["waiting_for_type"] == "beta" and body["status"] == "no_runner_for_type"
    assert body["type"] == "beta" and body["pending"] == 1
    admin = {"authorization": f"Bearer {api_fleet.admin_token}"}
    reps = httpx.get(f"{api_fleet.api_url}/admin/replicas", headers=admin, timeout=10).json()
    assert [r["types"] for r in reps] == [["alpha"]]
    metrics = httpx.get(f"{api_fleet.api_url}/metrics", timeout=10).text
    assert 'streamward_work_backlog_by_type{type="beta"} 1.0' in metrics
    # several sweeps pass: still queued, never run by the alpha runner, no pile-up of entries
    time.sleep(2)
    assert terminal(transcript(rc, "lonely"), acc["run_id"]) is None
    assert rc.xlen(KEYS.work_for("beta")) == 1
    _runner(api_fleet, "rb", "beta")
    done = wait_until(lambda: terminal(transcript(rc, "lonely"), acc["run_id"]), 20, "the run")
    assert done.type == "run.completed"
    assert _started_by(rc, "lonely") == ["rb"]
    assert live()["waiting_for_type"] is None


def test_a_later_invoke_naming_another_type_is_409(api_fleet: Fleet) -> None:
    invoke(api_fleet.api_url, "typed", {}, type="alpha")
    r = httpx.post(
        f"{api_fleet.api_url}/v1/sessions/typed/invoke",
        json={"input": {}, "mode": "detached", "type": "beta"},
        timeout=10,
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "type_mismatch"
    assert r.json()["session_type"] == "alpha"
    bad = httpx.post(
        f"{api_fleet.api_url}/v1/sessions/typed/invoke",
        json={"input": {}, "mode": "detached", "type": "no:colons"},
        timeout=10,
    )
    assert bad.status_code == 422, bad.text


def test_handler_specs() -> None:
    assert parse_handler_specs("m:f, b=m:g") == {"default": "m:f", "b": "m:g"}
    with pytest.raises(HandlerLoadError, match="named twice"):
        parse_handler_specs("a=m:f,a=m:g")
    with pytest.raises(HandlerLoadError, match="handler type"):
        parse_handler_specs("a:b=m:f")
    got = load_handlers("alpha=tests.runner.typed_hosts:alpha")
    assert list(got) == ["alpha"]
    with pytest.raises(HandlerLoadError, match="not an async generator function"):
        load_handlers("tests.runner.typed_hosts:not_a_generator")


def test_handler_class_checks() -> None:
    from streamward.runner.handlers import _check_host

    class Good:
        async def activate(self, ctx: Any) -> None: ...

        async def run(self, ctx: Any, input: Any) -> Any:
            yield input

        async def passivate(self, ctx: Any, reason: str) -> None: ...

    class SyncHook(Good):
        def passivate(self, ctx: Any, reason: str) -> None: ...  # type: ignore[override]

    class NotGen:
        async def run(self, ctx: Any, input: Any) -> Any:
            return input

    _check_host("m:Good", Good)
    with pytest.raises(HandlerLoadError, match="passivate must be a coroutine"):
        _check_host("m:SyncHook", SyncHook)
    with pytest.raises(HandlerLoadError, match="run must be an async generator"):
        _check_host("m:NotGen", NotGen)


def test_runner_resolves_handlers_from_cwd_and_refuses_in_one_line(tmp_path: Any) -> None:
    (tmp_path / "myhost.py").write_text("def handler(ctx, input):\n    return [input]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "streamward.tools", "runner", "--replica-id", "x",
         "--handler", "t=myhost:handler"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "STREAMWARD_REDIS_URL": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot import" not in proc.stderr  # found in the working directory
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not an async generator function" in lines[0], proc.stderr
