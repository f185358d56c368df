"""Session hosts in real runner processes: after a kill -9 the next owner's activate sees
``takeover`` and the last saved state."""

from __future__ import annotations

from typing import Any

from streamward.tools.fleet import Fleet
from tests.runner.helpers import invoke, owner, run_done, transcript, wait_until

HOST = ["--handler", "tests.runner.hosts:Counter"]


def _output(rc: Any, session_id: str, run_id: str) -> Any:
    wait_until(run_done(rc, session_id, run_id), 30, f"run {run_id}")
    entries = transcript(rc, session_id)
    (end,) = [e for e in entries if e.run_id == run_id and e.type.startswith("run.") and
              e.type not in ("run.started", "run.output")]  # fmt: skip
    assert end.type == "run.completed", end
    (out,) = [e.data for e in entries if e.run_id == run_id and e.type == "run.output"]
    return out


def test_kill_9_next_owner_activates_as_takeover_with_the_saved_state(
    api_fleet: Fleet, rc: Any
) -> None:
    r1 = api_fleet.start_runner("r1", args=HOST)
    first = invoke(api_fleet.api_url, "pr-1", {"text": "a"})
    assert _output(rc, "pr-1", first["run_id"]) == {"count": 1, "reason": "new", "found": None}
    second = invoke(api_fleet.api_url, "pr-1", {"text": "b"})  # warm: same activation
    assert _output(rc, "pr-1", second["run_id"]) == {"count": 2, "reason": "new", "found": None}
    api_fleet.start_runner("r2", args=HOST)
    r1.kill()  # SIGKILL: no passivate, no release; the lease names a dead replica
    third = invoke(api_fleet.api_url, "pr-1", {"text": "c"})
    out = _output(rc, "pr-1", third["run_id"])
    assert out == {"count": 3, "reason": "takeover", "found": {"count": 2}}
    own = owner(rc, "pr-1")
    assert own is not None and own[0] == "r2"
    state = rc.hgetall("sw:{default/pr-1}:state")
    assert state["replica_id"] == "r2" and int(state["token"]) == own[1]
