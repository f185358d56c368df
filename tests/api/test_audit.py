"""The ingest audit (STREAMWARD_INGEST_AUDIT_PATH): one record per attempt, whatever its outcome."""

from __future__ import annotations

from pathlib import Path

from streamward.api.audit import read_audit
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import ADMIN, RunnerSide

URL = "/admin/sessions/transcripts/ingest"


def _body(token: int, *seqs: int, replica: str | None = "replica-a") -> dict[str, object]:
    entries = [{"seq": s, "type": "run.output", "data": s} for s in seqs]
    body: dict[str, object] = {"session_id": "s1", "run_id": "r1", "token": token}
    body["entries"] = entries
    if replica is not None:
        body.update(replica_id=replica, incarnation=f"{replica}-inc")
    return body


async def test_every_attempt_is_recorded_with_its_outcome(
    make_settings: SettingsFactory, tmp_path: Path, redis_client: object
) -> None:
    path = tmp_path / "audit.jsonl"
    async with running_app(make_settings(ingest_audit_path=str(path))) as app:
        state = app.state.sw
        async with asgi_client(app) as client:
            runner = RunnerSide(client, state.store, state.streams, "replica-a")
            await runner.register()
            token = await runner.claim("s1")
            assert (
                await client.post(URL, headers=ADMIN, json=_body(token, 1, 2))
            ).status_code == 200
            # a replay: accepted as duplicates
            assert (
                await client.post(URL, headers=ADMIN, json=_body(token, 2, 3))
            ).status_code == 200
            r = await client.post(URL, headers=ADMIN, json=_body(token + 5, 4, replica="other"))
            assert r.status_code == 409
            # the current token, but the lease names another holder (a repeated token)
            r = await client.post(URL, headers=ADMIN, json=_body(token, 4, replica="other"))
            assert r.status_code == 409 and r.json()["code"] == "not_owner"
            r = await client.post(URL, headers=ADMIN, json=_body(token, 9, replica=None))
            assert r.status_code == 422
            # invalid bodies never reach the store: nothing to audit
            r = await client.post(URL, headers=ADMIN, json={"session_id": "s1"})
            assert r.status_code == 422
    recs = read_audit(str(path))
    got = [
        (r["outcome"], r["token"], r["first_seq"], r["last_seq"], r["accepted"], r["duplicates"])
        for r in recs
    ]
    assert got == [
        ("accepted", token, 1, 2, 2, 0),
        ("accepted", token, 2, 3, 1, 1),
        ("stale_token", token + 5, 4, 4, 0, 0),
        ("not_owner", token, 4, 4, 0, 0),
        ("seq_gap", token, 9, 9, 0, 0),
    ]
    assert [r["replica_id"] for r in recs] == ["replica-a", "replica-a", "other", "other", None]
    assert recs[0]["session"] == "default/s1" and recs[0]["incarnation"] == "replica-a-inc"
    # stale: the epoch it lost to is recorded
    assert recs[2]["current_token"] == token


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"outcome":"accepted"}\n{"outcome":"acc')
    assert read_audit(str(path)) == [{"outcome": "accepted"}]
