"""Callbacks across real processes: an API process killed (SIGKILL) in the middle of a
delivery attempt, another API process finishes the delivery; a real runner ran the run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx

from streamward.tools.fleet import Fleet
from tests.api.receiver import Receiver, verify

SECRET = "proc-secret"
ENV = {
    "STREAMWARD_CALLBACK_SECRETS": json.dumps({"default": SECRET}),
    "STREAMWARD_CALLBACK_ALLOW": json.dumps(["127.0.0.1/32"]),
    "STREAMWARD_CALLBACK_POLL_S": "0.1",
    "STREAMWARD_CALLBACK_RETRY_BASE_S": "0.1",
    "STREAMWARD_CALLBACK_RETRY_MAX_S": "0.3",
    # an attempt's claim lasts this + 5 s: the killed process's claim ends then
    "STREAMWARD_CALLBACK_TIMEOUT_S": "3",
}


def _until(pred: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_api_killed_mid_attempt_another_api_delivers_exactly_once(fleet: Fleet) -> None:
    # attempts 1-3 fail (500); attempt 2 hangs 2 s first: API A is killed while it waits
    receiver = Receiver(fail_first=3, slow_attempt=2, slow_s=2.0).start()
    try:
        fleet.env.update(ENV)
        api_a = fleet.start_api()
        fleet.start_runner("r1", api_url=api_a.url)
        r = httpx.post(
            f"{api_a.url}/v1/sessions/s1/invoke",
            json={"input": "hi", "mode": "detached", "callback": {"url": receiver.url}},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]

        _until(receiver.slow_started.is_set, "the second attempt to be in flight")
        api_a.kill()  # SIGKILL: its claim on the delivery is never released
        assert receiver.successes() == []

        api_b = fleet.start_api()
        _until(lambda: len(receiver.successes()) == 1, "API B to deliver")
        [ok] = receiver.successes()
        assert verify(SECRET, ok.headers["X-Streamward-Signature"], ok.body)
        assert json.loads(ok.body)["run"]["run_id"] == run_id
        assert receiver.attempts(ok.delivery_id) == 4

        def recorded() -> bool:
            got = httpx.get(f"{api_b.url}/v1/runs/{run_id}/deliveries", timeout=10).json()
            return bool(got["items"] and got["items"][0]["state"] == "delivered")

        _until(recorded, "the record to say delivered")
        [item] = httpx.get(f"{api_b.url}/v1/runs/{run_id}/deliveries", timeout=10).json()["items"]
        assert item["delivery_id"] == ok.delivery_id
        # the killed attempt was never recorded: 3 recorded of 4 sent
        assert [a["status_code"] for a in item["attempt_log"]] == [500, 500, 200]
        # delivered: out of the outbox, so no process attempts it again
        metrics = httpx.get(f"{api_b.url}/metrics", timeout=10).text
        assert "streamward_callback_outbox_depth 0.0" in metrics
        assert len(receiver.successes()) == 1 and receiver.attempts() == 4
    finally:
        receiver.stop()
