"""Liveness, cancel, sessions list / get / delete."""

from __future__ import annotations

import httpx
import pytest

from streamward.api.schemas import Liveness, SessionOut, SessionPage
from streamward.lua.streams import Streams
from tests.api.helpers import ADMIN, RunnerSide, assert_problem

pytestmark = pytest.mark.usefixtures("no_start_wait")


async def _invoke(client: httpx.AsyncClient, sid: str, **body: object) -> str:
    r = await client.post(f"/v1/sessions/{sid}/invoke", json={"mode": "detached", **body})
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


async def test_liveness_reports_owner_pending_and_active_run(
    client: httpx.AsyncClient, runner: RunnerSide
) -> None:
    run_id = await _invoke(client, "s1")
    live = Liveness.model_validate((await client.get("/v1/sessions/s1/liveness")).json())
    assert live.alive is False and live.owner is None
    assert (live.pending, live.attached, live.active_run_id) == (1, 0, None)
    assert live.status == "active"
    token = await runner.claim("s1")
    await runner.start("s1", run_id)
    live = Liveness.model_validate((await client.get("/v1/sessions/s1/liveness")).json())
    assert live.alive is True and live.active_run_id == run_id
    assert live.owner is not None
    assert (live.owner.replica_id, live.owner.incarnation) == ("replica-a", "replica-a-inc")
    assert live.owner.token == token and 0 < live.owner.expires_in_ms <= 60_000
    assert live.owner.acquired_at.endswith("Z")


async def test_liveness_not_alive_when_owner_replica_is_dead(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    await _invoke(client, "s1")
    await runner.claim("s1")
    await streams.delete_replica_lease("replica-a", "replica-a-inc")
    live = (await client.get("/v1/sessions/s1/liveness")).json()
    assert live["alive"] is False
    assert live["owner"]["replica_id"] == "replica-a" and live["owner"]["expires_in_ms"] == 0


async def test_cancel_active_run_requests_and_mails_owner(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    assert_problem(await client.post("/v1/sessions/s1/cancel"), 404, "session_not_found")
    run_id = await _invoke(client, "s1")
    assert_problem(await client.post("/v1/sessions/s1/cancel"), 409, "no_active_run")
    await runner.claim("s1")
    await runner.start("s1", run_id)
    r = await client.post("/v1/sessions/s1/cancel")
    assert r.status_code == 202
    assert r.json() == {"session_id": "s1", "run_id": run_id, "status": "cancelling"}
    sk = streams.keys.session("default", "s1")
    assert await streams.cancel_requested(sk, run_id)
    mail = await streams.read_mail("replica-a", "0-0", block_ms=1)
    assert ("cancel", "default/s1", run_id) in [(m.kind, m.session_ref, m.run_id) for m in mail]
    await runner.ingest("s1", run_id, ("run.cancelled", {"reason": "cancel"}))
    r = await client.post("/v1/sessions/s1/cancel", json={"run_id": run_id})
    assert_problem(r, 409, "run_finished")


async def test_cancel_a_queued_run_by_id(client: httpx.AsyncClient, streams: Streams) -> None:
    await _invoke(client, "s1")
    second = await _invoke(client, "s1")
    r = await client.post("/v1/sessions/s1/cancel", json={"run_id": second})
    assert r.status_code == 202 and r.json()["run_id"] == second
    assert await streams.cancel_requested(streams.keys.session("default", "s1"), second)


async def test_list_get_and_status_filter(client: httpx.AsyncClient, streams: Streams) -> None:
    for sid in ("a", "b", "c"):
        await _invoke(client, sid)
    await streams.set_meta(streams.keys.session("default", "b"), status="idle")
    page = SessionPage.model_validate((await client.get("/v1/sessions")).json())
    assert sorted(s.session_id for s in page.items) == ["a", "b", "c"]
    assert page.next_cursor is None
    idle = (await client.get("/v1/sessions", params={"status": "idle"})).json()
    assert [s["session_id"] for s in idle["items"]] == ["b"]
    one = SessionOut.model_validate((await client.get("/v1/sessions/a")).json())
    assert (one.project, one.status, one.pending, one.last_seq) == ("default", "active", 1, 0)
    assert one.created_at is not None and one.owner is None
    assert_problem(await client.get("/v1/sessions/zzz"), 404, "session_not_found")


async def test_list_pages_with_cursor(client: httpx.AsyncClient) -> None:
    # enough sessions that the indexes are skiplists
    ids = [f"s{i:03d}" for i in range(300)]
    for sid in ids:
        await _invoke(client, sid)
    seen: list[str] = []
    sizes: list[int] = []
    cursor = None
    for _ in range(100):
        params = {"limit": "50"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/sessions", params=params)).json()
        seen += [s["session_id"] for s in page["items"]]
        sizes.append(len(page["items"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [50] * 6  # exact pages, and no empty one after the last
    assert sorted(seen) == ids and len(seen) == len(set(seen))


async def test_delete_cancels_fences_and_keeps_the_log(
    client: httpx.AsyncClient, runner: RunnerSide, streams: Streams
) -> None:
    run_id = await _invoke(client, "s1")
    old_token = await runner.claim("s1")
    await runner.start("s1", run_id)
    queued = await _invoke(client, "s1")  # a pending input that deletion drops
    r = await client.delete("/v1/sessions/s1")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "deleted" and out["owner"] is None and out["pending"] == 0
    sk = streams.keys.session("default", "s1")
    assert await streams.cancel_requested(sk, run_id) is False  # cancels were dropped too
    # the owner is fenced: its next write is refused
    r = await client.post(
        "/admin/sessions/transcripts/ingest",
        headers=ADMIN,
        json={
            "session_id": "s1",
            "run_id": run_id,
            "token": old_token,
            "entries": [{"seq": 2, "type": "run.output", "data": 1}],
        },
    )
    assert_problem(r, 409, "stale_token")
    # the epoch never goes back, the log stays readable, the index forgets the session
    assert int(await streams.client.get(sk.epoch)) == old_token + 1
    tr = (await client.get("/v1/sessions/s1/transcript")).json()
    # the fenced owner cannot end its run: the deletion writes its terminal (new epoch), and
    # the dropped input's too: every acknowledged invoke sees an end
    assert [x["type"] for x in tr["items"]] == ["run.started", "run.cancelled", "run.cancelled"]
    assert [x["data"] for x in tr["items"][1:]] == [{"reason": "deleted"}] * 2
    assert [x["run_id"] for x in tr["items"][1:]] == [run_id, queued]
    assert (await client.get("/v1/sessions")).json()["items"] == []
    assert (await client.get("/v1/sessions/s1")).json()["status"] == "deleted"
    assert_problem(await client.delete("/v1/sessions/nope"), 404, "session_not_found")
