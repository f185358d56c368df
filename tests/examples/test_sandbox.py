"""The sandbox example: one real child process per activation, used by every run, and no
orphan left after idle passivation, drain, delete, a lost lease, or a kill -9 of its
runner followed by a takeover."""

from __future__ import annotations

import time
from typing import Any

import pytest

from streamward.runner.examples.sandbox import Sandbox
from streamward.testing import SessionHarness
from streamward.tools.fleet import Fleet
from tests.examples.procs import alive
from tests.runner.helpers import invoke, owner, run_done, transcript, wait_until


def sandbox_pid(h: SessionHarness, index: int = -1) -> int:
    host = h.hosts[index]
    assert isinstance(host, Sandbox) and host.proc is not None
    return host.proc.pid


async def test_one_process_serves_every_run_with_one_namespace() -> None:
    async with SessionHarness(Sandbox) as h:
        a = await h.invoke({"code": "x = 20"})
        b = await h.invoke({"code": "print('hi'); x * 2 + 2"})
        c = await h.invoke({"code": "x / 0"})
        pid = sandbox_pid(h)
        assert alive(pid)
    assert a.outputs[0]["ok"] and a.outputs[0]["pid"] == pid
    assert b.outputs[0] == {
        "ok": True, "stdout": "hi\n", "value": "42", "error": None, "pid": pid, "runs": 2
    }  # fmt: skip
    assert c.outputs[0]["error"] == "ZeroDivisionError: division by zero"
    assert not alive(pid)  # the harness' close drained it


@pytest.mark.parametrize("end", ["passivate", "drain", "delete", "lose"])
async def test_no_orphan_after_any_end(end: str) -> None:
    async with SessionHarness(Sandbox) as h:
        await h.invoke({"code": "1"})
        pid = sandbox_pid(h)
        assert alive(pid)
        await getattr(h, end)()
        assert h.instance.actor is None
        assert not alive(pid), f"sandbox {pid} outlived passivate after {end}"


async def test_takeover_starts_a_new_sandbox_and_the_old_one_dies_with_its_activation() -> None:
    async with SessionHarness(Sandbox) as h:
        await h.invoke({"code": "y = 1"})
        old = sandbox_pid(h)
        await h.takeover()
        res = await h.invoke({"code": "'y' in dir()"})
        new = sandbox_pid(h)
        assert new != old and res.outputs[0]["value"] == "False"  # a fresh process
        await h.previous.notice_loss()  # the paused old owner learns: passivate(lost)
        assert not alive(old) and alive(new)
    assert not alive(new)


async def test_a_child_that_will_not_stop_is_killed_when_passivate_is_cut_short() -> None:
    """The child ignores SIGTERM and hangs at exit; the hook's deadline (0.3 s) cancels
    ``passivate`` mid-way, and its ``finally`` still kills the child."""
    async with SessionHarness(Sandbox, passivate_timeout_s=0.3) as h:
        code = (
            "import atexit, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "atexit.register(time.sleep, 3600)"
        )
        await h.invoke({"code": code})
        pid = sandbox_pid(h)
        await h.passivate()
        await h.wait_for(lambda: not alive(pid), 5, f"sandbox {pid} killed")


def test_kill_9_of_its_runner_leaves_no_orphan_and_the_next_owner_starts_one(
    api_fleet: Fleet, rc: Any
) -> None:
    host = ["--handler", "streamward.runner.examples.sandbox:Sandbox"]
    r1 = api_fleet.start_runner("s1", args=host)
    first = invoke(api_fleet.api_url, "pr-7", {"code": "z = 7"})
    old_pid = _output(rc, "pr-7", first["run_id"])["pid"]
    assert alive(old_pid)
    api_fleet.start_runner("s2", args=host)
    r1.kill()  # SIGKILL: no hook runs; the child must go by itself
    wait_until(lambda: not alive(old_pid), 10, f"sandbox {old_pid} to exit with its runner")
    second = invoke(api_fleet.api_url, "pr-7", {"code": "'z' in dir()"})
    out = _output(rc, "pr-7", second["run_id"])
    assert out["value"] == "False" and out["pid"] != old_pid
    own = owner(rc, "pr-7")
    assert own is not None and own[0] == "s2"
    assert alive(out["pid"])
    api_fleet.stop()  # s2 drains: passivate(drain) stops its sandbox
    deadline = time.monotonic() + 10
    while alive(out["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(out["pid"])


def _output(rc: Any, session_id: str, run_id: str) -> Any:
    wait_until(run_done(rc, session_id, run_id), 30, f"run {run_id}")
    entries = transcript(rc, session_id)
    (out,) = [e.data for e in entries if e.run_id == run_id and e.type == "run.output"]
    return out
