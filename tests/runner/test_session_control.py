"""Start, stop and PATCH of a session with real runner processes and the real API: start
activates the host with no input and answers the owner, stop passivates (reason stopped) and
releases, 409 while a run is active unless cancel=true, and a PATCH of an owned session gets
its ``session.updated`` entry from the owner with the owner's next seq."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from streamward.tools.fleet import Fleet
from tests.runner.helpers import (
    KEYS,
    assert_seqs,
    invoke,
    live_owner,
    owner,
    run_done,
    transcript,
    wait_until,
)

HOST = ["--handler", "tests.runner.hosts:HookLog"]
ENV = {"STREAMWARD_CLOSE_DELAY_S": "30"}  # a started session stays put while the test looks


def _hooks(rc: Any, sid: str) -> list[str]:
    return list(rc.lrange(f"test:hooks:{sid}", 0, -1))


def _post(url: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=30, **kw)


def test_start_activates_with_no_input_and_answers_the_owner(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    assert _post(url, "/v1/sessions", json={"id": "s1", "title": "t"}).status_code == 201
    resp = _post(url, "/v1/sessions/s1/start")
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["status"] == "started" and got["owner"]["replica_id"] == "r1"
    token = got["owner"]["token"]
    assert got["owner"]["incarnation"] and got["owner"]["acquired_at"]
    # the host's activate ran before the answer; no run, no run entries
    assert _hooks(rc, "s1") == [f"activate:new:r1:{token}"]
    assert transcript(rc, "s1") == []
    assert live_owner(rc, "s1") == ("r1", token)
    # idempotent: the same owner, no second activation
    again = _post(url, "/v1/sessions/s1/start").json()
    assert again["status"] == "started" and again["owner"]["token"] == token
    assert _hooks(rc, "s1") == [f"activate:new:r1:{token}"]
    # an input now runs on the activated host
    acc = invoke(url, "s1", {"x": 1})
    assert wait_until(run_done(rc, "s1", acc["run_id"]), 20, "run").type == "run.completed"
    assert _hooks(rc, "s1") == [f"activate:new:r1:{token}"]


def test_stop_passivates_releases_and_the_next_input_reactivates(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    _post(url, "/v1/sessions", json={"id": "s2"})
    token = _post(url, "/v1/sessions/s2/start").json()["owner"]["token"]
    resp = _post(url, "/v1/sessions/s2/stop")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "stopped" and resp.json()["owner"]["token"] == token
    assert owner(rc, "s2") is None  # released
    assert _hooks(rc, "s2") == [f"activate:new:r1:{token}", "passivate:stopped"]
    meta = rc.hgetall(KEYS.session("default", "s2").meta)
    assert (meta["status"], meta["reason"], meta["released_by"]) == (
        "passivated",
        "stopped",
        "stopped",
    )
    history = [f["event"] for _, f in rc.xrange(KEYS.session("default", "s2").history)]
    assert history[-1] == "released"
    # stop again: nothing to stop
    assert _post(url, "/v1/sessions/s2/stop").json() == {
        "session_id": "s2", "status": "stopped", "owner": None, "waiting_for_type": None,
    }  # fmt: skip
    # the next input picks it up again, rehydrated (a clean stop, not a takeover)
    acc = invoke(url, "s2", {"x": 1})
    assert wait_until(run_done(rc, "s2", acc["run_id"]), 20, "run").type == "run.completed"
    assert _hooks(rc, "s2")[-1].startswith("activate:rehydrate:r1:")


def test_stop_with_an_active_run_is_409_unless_cancel(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    _post(url, "/v1/sessions", json={"id": "s3"})
    acc = invoke(url, "s3", {"sleep_s": 30})
    assert acc["status"] == "running"
    resp = _post(url, "/v1/sessions/s3/stop")
    assert resp.status_code == 409 and resp.json()["code"] == "run_active"
    assert resp.json()["active_run_id"] == acc["run_id"]
    resp = _post(url, "/v1/sessions/s3/stop", params={"cancel": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "stopped" and resp.json()["owner"]["replica_id"] == "r1"
    end = wait_until(run_done(rc, "s3", acc["run_id"]), 20, "cancelled")
    assert end.type == "run.cancelled" and end.data == {"reason": "cancel"}
    assert owner(rc, "s3") is None
    assert _hooks(rc, "s3")[-1] == "passivate:stopped"
    assert_seqs(transcript(rc, "s3"))


def test_stop_never_drops_a_waiting_input(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    acc = invoke(url, "s5", {"sleep_s": 30})
    # queued behind it: the detached answer would wait for its start, so don't wait for it
    with contextlib.suppress(httpx.ReadTimeout):
        body = {"input": {"x": 2}, "mode": "detached", "idempotency_key": "q"}
        httpx.post(f"{url}/v1/sessions/s5/invoke", json=body, timeout=0.5)
    wait_until(lambda: rc.xlen(KEYS.session("default", "s5").inbox) == 2, 10, "queued")
    resp = _post(url, "/v1/sessions/s5/stop", params={"cancel": "true"})
    assert resp.status_code == 409 and resp.json()["code"] == "inputs_pending"
    assert resp.json()["pending"] == 1
    # refused before anything was done: the run is still running, nothing cancelled
    live = httpx.get(f"{url}/v1/sessions/s5/liveness", timeout=10).json()
    assert live["active_run_id"] == acc["run_id"] and live["pending"] == 2
    _post(url, "/v1/sessions/s5/cancel")
    queued = httpx.post(f"{url}/v1/sessions/s5/invoke", json=body, timeout=30).json()
    assert wait_until(run_done(rc, "s5", queued["run_id"]), 20, "queued").type == "run.completed"
    assert wait_until(run_done(rc, "s5", acc["run_id"]), 20, "run").type == "run.cancelled"
    assert "passivate:stopped" not in _hooks(rc, "s5")


def test_patch_of_an_owned_session_gets_its_entry_from_the_owner(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    _post(url, "/v1/sessions", json={"id": "s4", "metadata": {"a": 1}})
    # no owner yet: the API writes the entry itself (seq 1)
    resp = httpx.patch(f"{url}/v1/sessions/s4", json={"title": "one"}, timeout=10)
    assert resp.status_code == 200
    acc = invoke(url, "s4", {"x": 1})
    wait_until(run_done(rc, "s4", acc["run_id"]), 20, "run")
    assert live_owner(rc, "s4") is not None  # close_delay: the owner stays
    resp = httpx.patch(f"{url}/v1/sessions/s4", json={"metadata": {"b": 2}}, timeout=10)
    assert resp.status_code == 200 and resp.json()["metadata"] == {"a": 1, "b": 2}

    def updates() -> list[Any] | None:
        found = [e for e in transcript(rc, "s4") if e.type == "session.updated"]
        return found if len(found) == 2 else None

    first, second = wait_until(updates, 20, "the owner's session.updated")
    assert first.seq == 1 and first.data == {"title": "one", "metadata": {"a": 1}}
    assert second.data == {"title": "one", "metadata": {"a": 1, "b": 2}}
    assert second.token == owner(rc, "s4")[1]  # type: ignore[index]
    # the owner's seq goes on after it: one more run, no gap, no duplicate
    acc = invoke(url, "s4", {"x": 2})
    wait_until(run_done(rc, "s4", acc["run_id"]), 20, "run")
    assert_seqs(transcript(rc, "s4"))


def test_patch_during_a_run_interleaves_without_breaking_seqs(api_fleet: Fleet, rc: Any) -> None:
    api_fleet.start_runner("r1", args=HOST, env=ENV)
    url = api_fleet.api_url
    acc = invoke(url, "s6", {"sleep_s": 1.5})
    assert acc["status"] == "running"
    for i in range(3):
        resp = httpx.patch(f"{url}/v1/sessions/s6", json={"metadata": {f"k{i}": i}}, timeout=10)
        assert resp.status_code == 200
    wait_until(run_done(rc, "s6", acc["run_id"]), 20, "run")

    def updates() -> list[Any] | None:
        found = [e for e in transcript(rc, "s6") if e.type == "session.updated"]
        return found if len(found) == 3 else None

    found = wait_until(updates, 20, "three session.updated entries")
    assert all(e.run_id == "session" for e in found)
    assert found[-1].data["metadata"] == {"k0": 0, "k1": 1, "k2": 2}
    entries = transcript(rc, "s6")
    assert_seqs(entries)
    run = [e.type for e in entries if e.run_id == acc["run_id"]]
    assert run == ["run.started", "run.output", "run.completed"]
