"""Event routing end to end: real API and runner processes on a real Redis."""

from __future__ import annotations

from typing import Any

import httpx

from streamward.tools.fleet import Fleet
from tests.runner.helpers import wait_until

ROUTE: dict[str, Any] = {
    "route_id": "chat",
    "source": "slack",
    "on": ["message"],
    # unloading from memory is close_delay_seconds; idle_timeout_seconds would end the generation
    "session": {"key_template": "chat", "close_delay_seconds": 30, "idle_timeout_seconds": 600},
    "input_expr": "{text: text}",
}


def _event(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "payload": {"chat": {"id": "C1"}, "thread": {"id": "T1"}, "text": text},
    }


def test_burst_runs_in_arrival_order_then_passivates_and_rehydrates(fleet: Fleet) -> None:
    # the runners cap every close delay at 1 s so passivation is seen without waiting 30 s
    fleet.env.update({"STREAMWARD_CLOSE_DELAY_MAX_S": "1", "STREAMWARD_REPLICA_TTL_MS": "2000"})
    api = fleet.start_api()
    fleet.start_runner("route-r1")
    fleet.start_runner("route-r2")
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    with httpx.Client(base_url=api.url, timeout=30.0) as http:
        assert http.post("/admin/routes", json=ROUTE, headers=admin).status_code == 201
        sessions = [http.post("/v1/events/slack", json=_event(f"m{i}")).json() for i in range(20)]
        actions = [s["sessions"][0]["action"] for s in sessions]
        assert actions == ["started"] + ["queued"] * 19
        sid = sessions[0]["sessions"][0]["session_id"]
        run_ids = [s["sessions"][0]["run_id"] for s in sessions]

        def transcript() -> list[dict[str, Any]]:
            r = http.get(f"/v1/sessions/{sid}/transcript", params={"limit": 1000})
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        def all_done() -> list[dict[str, Any]] | None:
            items = transcript()
            done = [e for e in items if e["type"] == "run.completed"]
            return items if len(done) == 20 else None

        items = wait_until(all_done, 60, "all 20 runs to complete")
        started = [e for e in items if e["type"] == "run.started"]
        assert [e["run_id"] for e in started] == run_ids  # arrival order
        outputs = [e["data"]["text"] for e in items if e["type"] == "run.output"]
        assert outputs == [f"m{i}" for i in range(20)]
        assert [e["seq"] for e in items] == list(range(1, len(items) + 1))

        # idle: no input, no run, no attached client -> passivated (reason idle), lease released
        def passivated() -> dict[str, Any] | None:
            s: dict[str, Any] = http.get(f"/v1/sessions/{sid}").json()
            return s if s["status"] == "passivated" and s["owner"] is None else None

        got = wait_until(passivated, 60, "idle passivation")
        assert got["reason"] == "idle"
        # the next event of the key rehydrates the same session on whichever replica claims it
        again = http.post("/v1/events/slack", json=_event("back")).json()["sessions"][0]
        assert (again["action"], again["session_id"]) == ("queued", sid)
        wait_until(
            lambda: any(
                e["type"] == "run.completed" and e["run_id"] == again["run_id"]
                for e in transcript()
            ),
            60,
            "the rehydrated run",
        )
        assert http.get(f"/v1/sessions/{sid}").json()["status"] in ("active", "passivated")
