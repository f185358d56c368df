"""Id validation: session, project and replica ids are checked before anything reaches Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from streamward.lua.errors import InvalidId, StreamwardError
from streamward.lua.keys import Keys, validate_id
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams
from streamward.tools.server import free_port

BAD: list[tuple[str, object]] = [
    ("empty", ""),
    ("too-long", "a" * 201),
    ("open-brace", "a{b"),
    ("close-brace", "a}b"),
    ("hash-tag", "{x}"),
    ("space", "a b"),
    ("leading-space", " ab"),
    ("tab", "a\tb"),
    ("newline", "a\nb"),
    ("trailing-newline", "abc\n"),
    ("nul", "a\x00b"),
    ("del", "a\x7fb"),
    ("escape", "\x1b[31m"),
    ("slash", "a/b"),
    ("star", "a*"),
    ("non-ascii-letter", "caf\u00e9"),
    ("non-ascii-digit", "\u0661\u0662"),
    ("nbsp", "a\u00a0b"),
    ("none", None),
    ("int", 42),
    ("bytes", b"abc"),
    ("list", ["a"]),
]
GOOD = ["a", "Z", "0", "a" * 200, "a.b_c:d-e", "-", ".", "..", ":", "_", "proj-1.prod:eu_west"]
FIELDS = ["project", "session_id", "replica_id"]


@pytest.mark.parametrize(("label", "value"), BAD, ids=[b[0] for b in BAD])
def test_validate_id_rejects_and_names_field(label: str, value: object) -> None:
    for field in FIELDS:
        with pytest.raises(InvalidId) as exc:
            validate_id(field, value)
        err = exc.value
        assert err.field == field
        assert str(err).startswith(f"invalid {field}: ")
        assert err.reason and err.reason in str(err)
        assert isinstance(err, StreamwardError) and isinstance(err, ValueError)
        assert err.code == "invalid_id"


def test_reasons_are_specific() -> None:
    def reason(v: object) -> str:
        with pytest.raises(InvalidId) as exc:
            validate_id("session_id", v)
        return exc.value.reason

    assert "empty" in reason("")
    assert "201" in reason("a" * 201) and "200" in reason("a" * 201)
    assert "'{'" in reason("ab{c}")
    assert "' '" in reason("a b")
    assert "'\\n'" in reason("a\nb")
    assert "string" in reason(7)
    # the message of an over-long id is shortened, not echoed in full
    with pytest.raises(InvalidId) as exc:
        validate_id("session_id", "x" * 5000)
    assert len(str(exc.value)) < 200


@pytest.mark.parametrize("value", GOOD)
def test_valid_edge_cases_pass(value: str) -> None:
    for field in FIELDS:
        assert validate_id(field, value) == value


@pytest.mark.parametrize(("label", "value"), BAD, ids=[b[0] for b in BAD])
def test_keys_validate_each_id_and_name_the_field(label: str, value: Any) -> None:
    keys = Keys()
    with pytest.raises(InvalidId) as exc:
        keys.session(value, "s1")
    assert exc.value.field == "project"
    with pytest.raises(InvalidId) as exc:
        keys.session("p1", value)
    assert exc.value.field == "session_id"
    with pytest.raises(InvalidId) as exc:
        keys.replica(value)
    assert exc.value.field == "replica_id"


def test_valid_ids_build_keys_with_one_hash_tag() -> None:
    keys = Keys()
    long = "s" * 200
    sk = keys.session("p.1:x", long)
    assert sk.lease == f"sw:{{p.1:x/{long}}}:lease"
    assert sk.ref == f"p.1:x/{long}"
    assert keys.replica("pod-0.ns:1").lease == "sw:replica:{pod-0.ns:1}"


def test_session_ref_is_validated() -> None:
    keys = Keys()
    assert keys.session_ref("p/s").ref == "p/s"
    with pytest.raises(InvalidId) as exc:
        keys.session_ref("no-slash")
    assert exc.value.field == "session"
    with pytest.raises(InvalidId) as exc:
        keys.session_ref("p/s/x")
    assert exc.value.field == "session_id"
    with pytest.raises(InvalidId) as exc:
        keys.session_ref("/s")
    assert exc.value.field == "project"


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "a b", "a\nb"])
def test_invalid_key_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys(prefix)


StoreCall = Callable[[LeaseStore, Streams, Keys], Awaitable[object]]
FACADE_CALLS: list[tuple[str, str, StoreCall]] = [
    (
        "acquire-replica",
        "replica_id",
        lambda st, _, k: st.acquire(k.session("p", "s"), "bad id", "i", 1000),
    ),
    (
        "takeover-replica",
        "replica_id",
        lambda st, _, k: st.takeover(k.session("p", "s"), ("r1", "i", 1), "r{1}", "i", 1000),
    ),
    (
        "takeover-expected",
        "replica_id",
        lambda st, _, k: st.takeover(k.session("p", "s"), ("", "i", 1), "r2", "i", 1000),
    ),
    ("register", "replica_id", lambda st, _, k: st.register_replica("", "i", 1000)),
    ("renew-replica", "replica_id", lambda st, _, k: st.renew_replica("a\x00", "i", 1000)),
    ("replica-alive", "replica_id", lambda st, _, k: st.replica_alive("a b")),
    ("session", "session_id", lambda st, _, k: st.ownership(k.session("p", "x" * 201))),
    ("project", "project", lambda st, _, k: st.ingest(k.session("p q", "s"), "run", 1, [])),
    ("mail", "replica_id", lambda _, sm, k: sm.send_mail("{r}", "wake")),
    ("replica-info", "replica_id", lambda _, sm, k: sm.replica_info("")),
]


@pytest.mark.parametrize(("label", "field", "call"), FACADE_CALLS, ids=[c[0] for c in FACADE_CALLS])
async def test_facade_rejects_bad_ids_before_reaching_redis(
    label: str, field: str, call: StoreCall
) -> None:
    # nothing listens on this port: reaching Redis would raise ConnectionError instead
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        keys = Keys()
        with pytest.raises(InvalidId) as exc:
            await call(LeaseStore(client, keys), Streams(client, keys), keys)
        assert exc.value.field == field
    finally:
        await client.aclose()
