"""Test helpers: the runner's side of the contract, driven through the real admin API."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import httpx
import orjson

from streamward.api.schemas import IngestResult, LogEntryOut
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WAIT_S = 15.0


class RunnerSide:
    """Plays a runner: takes leases with the real scripts, ships entries via admin ingest."""

    def __init__(
        self, client: httpx.AsyncClient, store: LeaseStore, streams: Streams, replica_id: str
    ) -> None:
        self.client = client
        self.store = store
        self.streams = streams
        self.replica_id = replica_id
        self.incarnation = f"{replica_id}-inc"
        self.tokens: dict[str, int] = {}
        self.seq: dict[str, int] = defaultdict(int)

    def keys(self, session_id: str, project: str = "default") -> SessionKeys:
        return self.store.keys.session(project, session_id)

    async def register(self, ttl_ms: int = 60_000) -> None:
        await self.store.register_replica(self.replica_id, self.incarnation, ttl_ms)

    async def claim(self, session_id: str, project: str = "default") -> int:
        lease = await self.store.acquire(
            self.keys(session_id, project), self.replica_id, self.incarnation, 60_000
        )
        self.tokens[f"{project}/{session_id}"] = lease.token
        self.seq[f"{project}/{session_id}"] = await self.streams.last_seq(
            self.keys(session_id, project)
        )
        return lease.token

    async def ingest(
        self,
        session_id: str,
        run_id: str,
        *entries: tuple[str, Any],
        project: str = "default",
        token: int | None = None,
    ) -> IngestResult:
        ref = f"{project}/{session_id}"
        batch = []
        for etype, data in entries:
            self.seq[ref] += 1
            batch.append({"seq": self.seq[ref], "type": etype, "data": data})
        r = await self.client.post(
            "/admin/sessions/transcripts/ingest",
            headers=ADMIN,
            json={
                "session_id": session_id,
                "project": project,
                "run_id": run_id,
                "token": self.tokens[ref] if token is None else token,
                "entries": batch,
            },
        )
        assert r.status_code == 200, r.text
        return IngestResult.model_validate(r.json())

    async def start(self, session_id: str, run_id: str, project: str = "default") -> None:
        await self.ingest(
            session_id,
            run_id,
            ("run.started", {"replica_id": self.replica_id, "attempt": 1, "input": None}),
            project=project,
        )

    async def finish(
        self, session_id: str, run_id: str, *outputs: Any, project: str = "default"
    ) -> None:
        entries: list[tuple[str, Any]] = [("run.output", o) for o in outputs]
        entries.append(("run.completed", {"outputs": len(outputs)}))
        await self.ingest(session_id, run_id, *entries, project=project)

    async def wait_inbox(
        self, session_id: str, count: int = 1, project: str = "default"
    ) -> list[InboxItem]:
        """Poll until the session inbox holds ``count`` inputs (the API enqueued them)."""
        sk = self.keys(session_id, project)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            items = await self.streams.read_inbox(sk, count=1000)
            if len(items) >= count:
                return items
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"inbox of {session_id} never reached {count} items")
            await asyncio.sleep(0.01)


async def wait_for(predicate: Any, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll an async predicate until true (no fixed sleeps in tests)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def ndjson(text: str) -> list[LogEntryOut]:
    return [LogEntryOut.model_validate(orjson.loads(x)) for x in text.splitlines() if x.strip()]


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert isinstance(body["title"], str)
    return body
