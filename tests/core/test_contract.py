"""The shared contract: one entry type from the runner's shipper through the API to the store,
the ingest body the shipper writes, and one set of terminal entry types."""

from __future__ import annotations

import re
from importlib import resources

import orjson
import redis.asyncio as aioredis

from streamward.core.contract import (
    RUN_INTERRUPTED,
    TERMINAL_STATUSES,
    TERMINAL_TYPES,
    Entry,
    IngestEncoder,
    IngestRequest,
)
from streamward.lua.keys import Keys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams


def test_the_encoder_writes_the_ingest_request_byte_for_byte_as_before() -> None:
    enc = IngestEncoder(session_id="s1", project="p", token=3, replica_id="r1", incarnation="inc-1")
    raw = orjson.dumps({"text": "hé", "n": [1, 2]})
    entries = [
        Entry(4, "run.started", orjson.Fragment(b'{"replica_id":"r1"}'), run_id="run_a"),
        Entry(5, "run.output", orjson.Fragment(raw), run_id="run_a"),
        Entry(6, "run.completed", {"outputs": 1}, run_id="run_a"),  # a plain value works too
    ]
    body = enc.encode("run_a", entries)
    # the bytes the shipper wrote before it used the contract: runners and APIs of either
    # version keep talking to each other
    assert body == (
        b'{"session_id":"s1","project":"p","token":3,"replica_id":"r1","incarnation":"inc-1",'
        b'"run_id":"run_a","entries":[{"seq":4,"type":"run.started","data":{"replica_id":"r1"}},'
        b'{"seq":5,"type":"run.output","data":' + raw + b"},"
        b'{"seq":6,"type":"run.completed","data":{"outputs":1}}]}'
    )
    req = IngestRequest.model_validate_json(body)
    assert (req.session_id, req.project, req.token, req.run_id) == ("s1", "p", 3, "run_a")
    assert (req.replica_id, req.incarnation) == ("r1", "inc-1")
    assert [(e.seq, e.type, e.data, e.ts) for e in req.entries] == [
        (4, "run.started", {"replica_id": "r1"}, None),
        (5, "run.output", {"text": "hé", "n": [1, 2]}, None),
        (6, "run.completed", {"outputs": 1}, None),
    ]


def test_the_encoder_leaves_out_an_unnamed_writer() -> None:
    body = IngestEncoder(session_id="s1", project="default", token=1).encode(
        "run_a", [Entry(1, "run.output", None)]
    )
    assert IngestRequest.model_validate_json(body).replica_id is None
    assert b"replica_id" not in body


def test_terminal_types_are_one_set_with_their_run_states() -> None:
    # run.merged: an input a running run absorbed (ctx.pending_inputs) ends there
    assert {"run.completed", "run.failed", "run.cancelled", "run.merged"} == TERMINAL_TYPES
    assert RUN_INTERRUPTED not in TERMINAL_TYPES  # the next owner re-runs an interrupted run
    assert {"completed", "failed", "cancelled", "merged"} == TERMINAL_STATUSES
    assert Entry(1, "run.failed").terminal and not Entry(1, "run.interrupted").terminal


def test_the_ingest_script_ends_runs_on_the_same_types() -> None:
    # Lua cannot import the Python constant: its copy must say the same
    lua = resources.files("streamward.lua")
    files = [*lua.iterdir(), *(lua / "includes").iterdir()]  # (ingestEntries' body: an include)
    tables = [
        set(re.findall(r"\['(run\.[a-z_]+)'\]", m))
        for f in files
        if f.name.endswith(".lua")
        for m in re.findall(r"local terminal = \{([^}]*)\}", f.read_text())
    ]
    assert tables and all(t == TERMINAL_TYPES for t in tables)


async def test_an_entry_written_is_the_entry_read_back(
    store: LeaseStore, redis_client: aioredis.Redis, keys: Keys
) -> None:
    sk = keys.session("p", "s1")
    lease = await store.acquire(sk, "r1", "inc-1", 60_000)
    started = Entry(1, "run.started", {"replica_id": "r1"}, ts_ms=1_000)
    output = Entry(2, "run.output", orjson.Fragment(b'{"n":1}'), ts_ms=2_000)
    await store.ingest(sk, "run_a", lease.token, [started, output])
    got = await Streams(redis_client, keys).read_log(sk, "0-0", count=10)
    assert got == [
        Entry(
            1, "run.started", {"replica_id": "r1"}, run_id="run_a", token=1, ts_ms=1_000, id="1-0"
        ),
        Entry(2, "run.output", {"n": 1}, run_id="run_a", token=1, ts_ms=2_000, id="2-0"),
    ]
    assert got[0].started_by == "r1" and got[1].started_by == ""
