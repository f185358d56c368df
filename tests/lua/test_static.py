"""Static checks of lua/*.lua (headers, keys only through KEYS, status codes) and the agreement
between the headers and what the facade (lua/store.py) really passes."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from streamward.lua import errors as E
from streamward.lua.keys import Keys, hash_tag
from streamward.lua.loader import ArgT, KeyT, Script, ScriptSource, script_sources
from streamward.lua.outbox import Outbox
from streamward.lua.quotas import QuotaCalls
from streamward.lua.routes import RouteStore
from streamward.lua.store import Entry, LeaseStore
from streamward.lua.streams import Streams
from tests.lua import luastatic as L

SOURCES = sorted(script_sources().values(), key=lambda s: s.filename)
IDS = [s.filename for s in SOURCES]
KNOWN_ERROR_CODES = {
    E.HELD,
    E.NOT_OWNER,
    E.STALE_TOKEN,
    E.REPLICA_LOST,
    E.SEQ_GAP,
    E.BUSY,
    E.NOT_FOUND,
    E.TYPE_MISMATCH,
    E.INBOX_FULL,
    E.SESSION_LIMIT,
    E.RATE_LIMITED,
}


def test_every_shipped_lua_file_is_checked() -> None:
    files = sorted(
        e.name for e in resources.files("streamward.lua").iterdir() if e.name.endswith(".lua")
    )
    assert files == IDS
    assert len(files) >= 12


# -- (a) header block ----------------------------------------------------------------------


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_header_documents_name_keys_argv_and_returns(src: ScriptSource) -> None:
    head = L.parse_header(src.filename, src.source)
    assert head.problems == []
    assert head.name == src.filename
    assert head.keys and head.returns and head.returns[0].startswith("Returns")
    uses_argv = bool(L.used_indices(src.source, "ARGV"))
    assert bool(head.argv) == uses_argv, "ARGV documented iff the script reads ARGV"


# -- (b) KEYS documented == KEYS in the file name -------------------------------------------


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_documented_keys_match_file_name(src: ScriptSource) -> None:
    head = L.parse_header(src.filename, src.source)
    used = L.used_indices(src.source, "KEYS")
    body = L.body_of(src.source)
    if src.num_keys is None:  # variadic: KEYS[1..n], iterated with #KEYS
        assert list(head.keys) == ["1..n"]
        assert "#KEYS" in body
        assert used and not any(i.isdigit() for i in used), used
    else:
        assert sorted(head.keys, key=int) == [str(i) for i in range(1, src.num_keys + 1)]
        assert used == set(head.keys), "every documented key is used, and only those"
        assert "#KEYS" not in body


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_argv_used_in_code_is_documented(src: ScriptSource) -> None:
    head = L.parse_header(src.filename, src.source)
    used = L.used_indices(src.source, "ARGV")
    literal = {int(i) for i in used if i.isdigit()}
    computed = {i for i in used if not i.isdigit()}
    fixed = set(head.fixed_argv)
    tail = head.argv_tail
    if tail is None:
        assert literal == fixed, f"used {sorted(literal)}, documented {sorted(fixed)}"
        assert not computed, f"computed ARGV index {computed} but no variadic ARGV documented"
    else:
        assert fixed <= literal, f"documented but unused: {sorted(fixed - literal)}"
        assert all(i in fixed or i >= tail[0] for i in literal)
        assert computed, "a variadic ARGV tail is documented but never indexed"


# -- (c) keys only through KEYS -------------------------------------------------------------


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_every_key_comes_from_keys(src: ScriptSource) -> None:
    calls = L.redis_calls(src.source)
    assert calls, "no redis calls found: the checker would be vacuous"
    assert L.key_problems(src.source) == []


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_time_comes_from_redis(src: ScriptSource) -> None:
    body = L.body_of(src.source)
    assert "os.time" not in body and "os.clock" not in body
    if "now" in body:
        assert any(c.command == "TIME" for c in L.redis_calls(src.source))


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_returned_status_codes_are_documented_and_known(src: ScriptSource) -> None:
    head = L.parse_header(src.filename, src.source)
    returned = L.returned_codes(src.source)
    documented = head.documented_codes
    assert returned <= documented, f"returned but not documented: {returned - documented}"
    negatives = {c for c in documented if c < 0}
    assert negatives <= returned, f"documented but never returned: {negatives - returned}"
    assert negatives <= KNOWN_ERROR_CODES, "an error code lua.errors does not map"
    for code in negatives:  # and the one map turns each into a StreamwardError
        reply: list[object] = [code, "1", "2", "3", "4"]
        err = E.status_error(src.name, reply)
        assert isinstance(err, E.StreamwardError)
        assert not isinstance(err, E.ScriptError)


def test_status_code_include_matches_lua_errors() -> None:
    text = (resources.files("streamward.lua") / "includes" / "statusCodes.lua").read_text(
        encoding="utf-8"
    )
    consts = L.status_constants(text)
    assert consts == {name: getattr(E, name) for name in consts}
    assert set(consts.values()) == {E.OK, E.DUPLICATE} | KNOWN_ERROR_CODES


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_time_prelude_lives_in_its_include(src: ScriptSource) -> None:
    """No script computes ms from TIME itself; the inlined source has the include's."""
    assert not any(c.command == "TIME" for c in L.redis_calls(src.raw))
    if "redis_now_ms()" in L.body_of(src.raw):
        assert '--- @include "includes/redisTime"' in src.raw
        assert [c.command for c in L.redis_calls(src.source)].count("TIME") == 1


def test_returned_codes_reads_constants_and_refuses_unknown_names() -> None:
    src = (
        "--[[\n  x-1.lua\n]]\nlocal OK = 1\nlocal BAD = -9\n"
        "if a then return {BAD, 1} end\nreturn {OK}\n"
    )
    assert L.returned_codes(src) == {1, -9}
    with pytest.raises(KeyError):
        L.returned_codes("--[[\n  x-1.lua\n]]\nreturn {NOPE}\n")


# The checker itself must catch what it is meant to catch.
BAD_SNIPPETS = {
    "literal key": "rcall('GET', 'sw:{p/s}:lease')",
    "concatenated key": "rcall('HSET', KEYS[1] .. ':x', 'f', 1)",
    "argv as key": "redis.call('DEL', ARGV[1])",
    "second DEL key": "rcall('DEL', KEYS[1], 'other')",
    "KEYS command": "rcall('KEYS', '*')",
    "SCAN command": "redis.pcall('SCAN', 0)",
    "dynamic command": "rcall(ARGV[1], KEYS[1])",
    "unknown command": "rcall('SUNIONSTORE', KEYS[1], KEYS[2])",
    "alias": "local r = redis.call\nr('GET', 'x')",
    "missing key": "rcall('GET')",
}


@pytest.mark.parametrize("snippet", BAD_SNIPPETS.values(), ids=list(BAD_SNIPPETS))
def test_key_checker_catches_bad_code(snippet: str) -> None:
    assert L.key_problems(snippet) != []


def test_key_checker_ignores_comments_and_strings() -> None:
    ok = (
        "--[[ rcall('KEYS', '*') ]]\n"
        "local rcall = redis.call\n"
        "-- rcall('GET', 'literal')\n"
        "local s = \"rcall('SCAN', 0)\"\n"
        "rcall('HSET', KEYS[2], 'f', '(x, y)')\n"
        "for i = 1, #KEYS do rcall('PEXPIRE', KEYS[i], ARGV[1]) end\n"
    )
    assert L.key_problems(ok) == []
    calls = L.redis_calls(ok)
    assert [(c.command, c.args) for c in calls] == [
        ("HSET", ["KEYS[2]", "'f'", "'(x, y)'"]),
        ("PEXPIRE", ["KEYS[i]", "ARGV[1]"]),
    ]


BAD_HEADERS = {
    "no block": "local x = 1\n",
    "wrong name": "--[[\n  other-1.lua\n  KEYS[1] k\n  Returns {1}\n]]\n",
    "no keys": "--[[\n  doc-1.lua\n  ARGV[1] a\n  Returns {1}\n]]\n",
    "no returns": "--[[\n  doc-1.lua\n  KEYS[1] k\n]]\n",
    "argv hole": "--[[\n  doc-1.lua\n  KEYS[1] k\n  ARGV[1] a\n  ARGV[3] c\n  Returns {1}\n]]\n",
    "bad tail": "--[[\n  doc-1.lua\n  KEYS[1] k\n  ARGV[1] a\n  ARGV[4..] x\n  Returns {1}\n]]\n",
}


@pytest.mark.parametrize("text", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_header_checker_catches_bad_headers(text: str) -> None:
    assert L.parse_header("doc-1.lua", text).problems != []


# -- (d) + header/facade agreement: record what the facade really passes --------------------

PREFIX = "swx"  # not the default: the facade must build keys under the configured prefix


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[Any]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        orig_call = Script.__call__
        orig_queue = Script.queue
        rec = self

        async def call(
            self: Script,
            keys: Sequence[KeyT],
            args: Sequence[ArgT],
            client: aioredis.Redis | None = None,
        ) -> Any:
            rec.calls.append((self.src.name, list(keys), list(args)))
            return await orig_call(self, keys, args, client)

        def queue(self: Script, pipe: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> None:
            rec.calls.append((self.src.name, list(keys), list(args)))
            orig_queue(self, pipe, keys, args)

        monkeypatch.setattr(Script, "__call__", call)
        monkeypatch.setattr(Script, "queue", queue)


async def _drive_facade(store: LeaseStore, cluster_grouping: bool) -> None:
    """Call every facade operation that runs a script, at least once."""
    keys = store.keys
    routes = RouteStore(store.client, keys)
    await routes.bind("proj", "gh-pr", "org/repo#1", session_timeout_ms=60_000, daily_reset_hour=3)
    await routes.bind(
        "proj", "gh-pr", "org/repo#1", session_timeout_ms=60_000, daily_reset_hour=None
    )
    s = keys.session("proj", "sess")
    await store.register_replica("r1", "inc-1", 5_000, {"host": "h", "pod": "p"})
    await store.renew_replica("r1", "inc-1", 5_000, {"leases": "1"})
    await store.register_replica("r2", "inc-1", 5_000)
    lease = await store.acquire(s, "r1", "inc-1", 60_000)
    await store.ownership(s)
    await store.ingest(
        s, "run_a", lease.token, [Entry(1, "run.started", {}), Entry(2, "run.output", {})]
    )
    queued = await store.enqueue(s, "run_b", "{}", idempotency_key="idem-1")
    await store.notify_replica("r1", "inc-1", "input", s.ref)
    await store.notify_replica("r1", "inc-1", "input", s.ref, touch=(s, 1))  # + pipeline
    await store.peek_inbox(s, 10)
    await store.advance_inbox(s, lease.token, queued.entry_id or "0-1", 10)
    await store.complete_input(s, lease.token, queued.entry_id or "0-1")
    await store.ingest(
        s, "run_b", lease.token, [Entry(3, "run.completed", {})], advance=("0-1", 10, ("r1", 3))
    )
    await store.save_state(s, ("r1", "inc-1", lease.token), '{"n": 1}')
    await store.renew_many("r1", "inc-1", [(s, lease.token)], 60_000)
    taken = await store.takeover(s, ("r1", "inc-1", lease.token), "r2", "inc-1", 60_000)
    await store.release(s, "r2", "inc-1", taken.token)
    await store.force_release(s, "test")
    await store.scripts.prune_pending(keys.pending, [(s.ref, 0)])
    await store.claim_lock(keys.watchdog, "r1:inc-1", 5_000)
    # the listing's scripts, on the project's slot (the touch above indexed proj/sess)
    streams = Streams(store.client, keys)
    await streams.snapshot_activity("proj", "0" * 32, None, True, 1, 60_000)
    await streams.prune_gone("proj", [("sess", 1)])
    made = keys.session("proj", "m999")
    await store.create_session(
        made, title="t", metadata_json="{}", session_type="default", status="idle"
    )
    await store.update_session(made, expected_metadata="{}", metadata_json="{}", title=False,
                               entry_json="{}")  # fmt: skip
    outbox = Outbox(store.client, keys, store.scripts)
    await outbox.add("dlv_1", "run_a", {"event": "run.completed", "body": "{}"}, 60_000)
    [claim] = await outbox.claim(30_000, 10)
    await outbox.record(claim, False, 500, "HTTP 500", 1_000, 3_600_000)
    quotas = QuotaCalls(store.client, keys, store.scripts)
    await quotas.admit(s, rate_per_s=10, burst=5, max_live=10)
    await quotas.refund("proj", rate_per_s=10, burst=5)
    # many sessions in one renewal: on Cluster they must be grouped by slot
    many = [keys.session("proj", f"m{i}") for i in range(120)]
    held = [(m, (await store.acquire(m, "r1", "inc-1", 60_000)).token) for m in many]
    store.cluster = cluster_grouping
    try:
        result = await store.renew_many("r1", "inc-1", held, 60_000, chunk=7)
    finally:
        store.cluster = False
    assert len(result.renewed) == len(many)


def _key_pattern(doc: str) -> re.Pattern[str]:
    """Regex for the key a header documents (``sw:{S}:lease`` style, prefix ``sw``)."""
    m = re.search(r"\bsw:\S+", doc)
    assert m, f"no sw:... key in {doc!r}"
    text = m.group(0).rstrip(",")
    rx = re.escape(text)
    rx = rx.replace(r"\{S\}", r"\{[^{}/]+/[^{}/]+\}").replace(r"\{R\}", r"\{[^{}/]+\}")
    rx = rx.replace(r"\{P\}", r"\{[^{}/]+\}")  # a project's own keys
    rx = re.sub(r"<\w+>", "[^{}]+", rx)  # <project>, <key>, ...: one id-like part
    assert rx.startswith("sw:")
    return re.compile(re.escape(PREFIX) + rx[2:])


def _tail_count(desc: str) -> int:
    """Arguments per item of a documented variadic ARGV tail."""
    if "field, value" in desc:
        return 2
    m = re.search(r"per entry:\s*(.*)$", desc)
    if m:
        names = re.sub(r"\([^)]*\)", "", m.group(1))
        return len([n for n in names.split(",") if n.strip()])
    raise AssertionError(f"cannot read the shape of variadic ARGV {desc!r}")


@pytest.mark.parametrize("cluster_grouping", [False, True], ids=["standalone", "cluster-groups"])
async def test_facade_calls_agree_with_headers_and_share_one_hash_tag(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, cluster_grouping: bool
) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    store = LeaseStore(redis_client, Keys(PREFIX))
    await _drive_facade(store, cluster_grouping)

    called = {name for name, _, _ in rec.calls}
    assert called == set(script_sources()), f"facade never calls {set(script_sources()) - called}"

    seen_multi_slot_batch = False
    by_script: dict[str, int] = defaultdict(int)
    for name, keys, args in rec.calls:
        src = script_sources()[name]
        head = L.parse_header(src.filename, src.source)
        by_script[name] += 1
        where = f"{src.filename} called with keys={keys} args={args}"

        # key count: file name, header and call agree
        if src.num_keys is None:
            assert keys, where
        else:
            assert len(keys) == src.num_keys == len(head.keys), where

        # each key is the one the header documents at that position
        for i, key in enumerate(keys, start=1):
            doc = head.keys["1..n"] if src.num_keys is None else head.keys[str(i)]
            assert _key_pattern(doc).fullmatch(key), f"KEYS[{i}]={key!r} vs {doc!r}: {where}"

        # ARGV count: as documented (fixed part, plus the documented shape of a variadic tail)
        fixed = len(head.fixed_argv)
        tail = head.argv_tail
        if tail is None:
            assert len(args) == fixed, f"header documents {fixed} ARGV: {where}"
        else:
            extra = len(args) - fixed
            assert extra >= 0, where
            idx = next(k for k in head.argv if ".." in k)
            if idx.endswith("+n"):  # one per key
                assert extra == len(keys), where
            else:
                per = _tail_count(tail[1])
                assert extra % per == 0, f"{extra} tail ARGV not a multiple of {per}: {where}"
                counts = [i for i, d in head.argv.items() if d.startswith("n ")]
                if counts:  # a documented item count, e.g. ingest's n
                    assert int(args[int(counts[0]) - 1]) * per == extra, where

        # Cluster safety: all keys of one call hash to one slot
        tags = {hash_tag(k) for k in keys}
        if src.num_keys is None:
            slots = {key_slot(k.encode()) for k in keys}
            if cluster_grouping:
                assert len(slots) == 1, f"variadic call spans slots {slots}: {where}"
            seen_multi_slot_batch |= len(slots) > 1
        else:
            assert len(tags) == 1, f"keys of one call have tags {tags}: {where}"
            tag = tags.pop()
            docs = " ".join(head.keys.values())
            if "{S}" in docs:  # a session's keys: its tag is project/session_id
                assert re.fullmatch(r"proj/(sess|m\d+)", tag), where
            elif "{R}" in docs:
                assert tag in {"r1", "r2"}, where
            elif "{P}" in docs:
                assert tag == "proj", where
    # without grouping the 120 sessions do span slots; with it, no call does
    assert seen_multi_slot_batch is not cluster_grouping
    if cluster_grouping:
        assert by_script["renewLeases"] > 2
