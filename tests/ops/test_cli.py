"""``streamward locks`` / ``streamward replicas`` against a live API with real runners."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner, Result

import streamward.tools.sre
from streamward.api.schemas import LockDetail, LockOut
from streamward.tools.cli import app
from streamward.tools.server import free_port
from streamward.tools.sre import (
    LOCK_COLUMNS,
    LOCK_WIDE,
    REPLICA_COLUMNS,
    REPLICA_WIDE,
    filter_locks,
    fmt_duration,
)
from tests.ops.conftest import PROJECT_B, TOKEN_A, System, wait_until

cli = CliRunner()


def run(system: System | None, *args: str, input: str | None = None) -> Result:
    env = system.env if system is not None else {}
    return cli.invoke(app, list(args), env=env, input=input)


def ok(system: System, *args: str) -> str:
    res = run(system, *args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.stdout


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


# -- locks ls ---------------------------------------------------------------------------------


def test_locks_table(system: System) -> None:
    out = rows(ok(system, "locks", "ls"))
    assert out[0] == LOCK_COLUMNS
    by_session = {r[0]: r for r in out[1:]}
    assert set(by_session) == {"alpha", f"{PROJECT_B}/beta"}
    for r in by_session.values():
        assert len(r) == len(LOCK_COLUMNS)
        assert r[1] in system.runners  # HOLDER
        assert int(r[3]) >= 1  # TOKEN
        assert r[-1] == "held"


def test_locks_wide_and_no_headers(system: System) -> None:
    wide = rows(ok(system, "locks", "ls", "-o", "wide"))
    assert wide[0] == LOCK_WIDE
    alpha = next(r for r in wide if r[0] == "alpha")
    assert alpha[LOCK_WIDE.index("PROJECT")] == "default"
    assert alpha[LOCK_WIDE.index("ACQUIRED-AT")].endswith("Z")
    bare = rows(ok(system, "locks", "ls", "--no-headers"))
    assert sorted(r[0] for r in bare) == ["alpha", f"{PROJECT_B}/beta"]
    assert all(r[0] != "SESSION" for r in bare)
    bare_wide = rows(ok(system, "locks", "ls", "-o", "wide", "--no-headers"))
    assert len(bare_wide) == 2 and all(len(r) == len(LOCK_WIDE) for r in bare_wide)


def test_locks_json_and_yaml_agree(system: System) -> None:
    as_json = orjson.loads(ok(system, "locks", "ls", "-o", "json"))
    as_yaml = yaml.safe_load(ok(system, "locks", "ls", "-o", "yaml"))
    for doc in (as_json, as_yaml):
        locks = [LockOut.model_validate(x) for x in doc]
        assert {(x.project, x.session_id) for x in locks} == {
            ("default", "alpha"),
            (PROJECT_B, "beta"),
        }
        assert all(x.state == "held" and x.holder in system.runners for x in locks)
    # --no-headers changes nothing in machine formats (still one parseable document)
    bare = orjson.loads(ok(system, "locks", "ls", "-o", "json", "--no-headers"))
    assert [x["session_id"] for x in bare] == [x["session_id"] for x in as_json]


def _holders(system: System, *args: str) -> dict[str, str]:
    doc = orjson.loads(ok(system, "locks", "ls", "-o", "json", *args))
    return {f"{x['project']}/{x['session_id']}": x["holder"] for x in doc}


def test_locks_filters(system: System) -> None:
    everything = _holders(system)
    assert _holders(system, "--project", PROJECT_B) == {
        f"{PROJECT_B}/beta": everything[f"{PROJECT_B}/beta"]
    }
    for replica in system.runners:
        mine = _holders(system, "--replica", replica)
        assert mine == {k: v for k, v in everything.items() if v == replica}
    # live leases are valid for at most the replica TTL (2 s here)
    assert _holders(system, "--expiring-within", "1h") == everything
    assert _holders(system, "--state", "free") == {}


def test_expiring_within_filter_unit() -> None:
    def lock(sid: str, state: str, exp: int | None) -> LockOut:
        return LockOut.model_validate(
            {"session_id": sid, "project": "default", "state": state, "expires_in_ms": exp}
        )

    locks = [lock("a", "held", 4000), lock("b", "held", 900), lock("c", "orphaned", 0)]
    locks.append(lock("d", "free", None))
    got = filter_locks(locks, include_free=False, expiring_within_s=1.0)
    assert [x.session_id for x in got] == ["b", "c"]
    assert [
        x.session_id for x in filter_locks(locks, include_free=False, expiring_within_s=None)
    ] == [
        "a",
        "b",
        "c",
    ]
    assert len(filter_locks(locks, include_free=True, expiring_within_s=None)) == 4


def test_watch_refreshes_until_ctrl_c(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 3:
            raise KeyboardInterrupt  # what Ctrl-C does to a watch

    monkeypatch.setattr(streamward.tools.sre, "pause", fake_sleep)
    res = run(system, "locks", "ls", "-w", "--interval", "0.5")
    assert res.exit_code == 0, res.output
    assert sleeps == [0.5, 0.5, 0.5]
    assert "alpha" in res.stdout and "SESSION" in res.stdout
    # piped (CliRunner is no terminal): one frame per interval, not just the last one
    assert res.stdout.count("Ctrl-C to stop") == 3
    assert res.stdout.count("SESSION") == 3


# -- locks show / release ---------------------------------------------------------------------


def test_locks_show(system: System) -> None:
    # on a loaded machine the first output may still be in the runner's shipper
    wait_until(lambda: "run.output" in ok(system, "locks", "show", "alpha"), "alpha's first output")
    text = ok(system, "locks", "show", "alpha")
    with system.admin() as c:
        lock = c.lock("alpha")
    assert f"{lock.holder} (incarnation {lock.incarnation}), replica ready" in text
    assert "run.output" in text  # run.started scrolls out of the last entries of a long run
    detail = LockDetail.model_validate(
        orjson.loads(ok(system, "locks", "show", "alpha", "-o", "json"))
    )
    assert detail.lock.holder == lock.holder
    assert detail.holder_replica is not None and detail.holder_replica.state == "ready"
    assert detail.active_run is not None and detail.active_run.status == "started"
    assert detail.pending >= 1  # the running input stays in the inbox until it completes
    entries = detail.last_entries
    assert entries and all(e.run_id == detail.active_run.run_id for e in entries)
    assert {e.type for e in entries} <= {"run.started", "run.output"}
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    beta = yaml.safe_load(ok(system, "locks", "show", f"{PROJECT_B}/beta", "-o", "yaml"))
    assert beta["lock"]["project"] == PROJECT_B
    same = yaml.safe_load(ok(system, "locks", "show", "beta", "--project", PROJECT_B, "-o", "yaml"))
    assert same["lock"]["session_id"] == "beta"


def test_locks_show_unknown_session(system: System) -> None:
    res = run(system, "locks", "show", "nope")
    assert res.exit_code == 1
    assert "no session 'nope'" in res.stderr
    res = run(system, "locks", "show", "bad id!")
    assert res.exit_code == 2
    assert "not an id" in res.stderr


def _lock(system: System, session_id: str) -> LockOut:
    with system.admin() as c:
        return c.lock(session_id)


def _newer_owner(system: System, session_id: str, before: LockOut) -> Callable[[], bool]:
    def check() -> bool:
        now = _lock(system, session_id)
        return now.state == "held" and (now.token or 0) > (before.token or 0)

    return check


def test_locks_release_asks_first(system: System) -> None:
    owner = system.start_long_run("rel-no")
    before = _lock(system, "rel-no")
    res = run(system, "locks", "release", "rel-no", input="n\n")
    assert res.exit_code == 1
    assert f"before: holder {owner}" in res.stderr
    assert "aborted" in res.stderr
    after = _lock(system, "rel-no")
    assert (after.holder, after.token) == (before.holder, before.token)  # nothing happened


def test_locks_release_with_stdin_closed_says_how_to_skip(system: System) -> None:
    system.start_long_run("rel-eof")
    before = _lock(system, "rel-eof")
    res = run(system, "locks", "release", "rel-eof", input="")
    assert res.exit_code == 1
    assert "--yes skips this question" in res.stderr
    assert "pass --yes" in res.stderr and "Aborted." not in res.output
    after = _lock(system, "rel-eof")
    assert (after.holder, after.token) == (before.holder, before.token)


def test_locks_release_confirmed_and_yes(system: System) -> None:
    for session_id, args, answer in (
        ("rel-yes", [], "y\n"),
        ("rel-flag", ["--yes"], None),
    ):
        owner = system.start_long_run(session_id)
        before = _lock(system, session_id)
        res = run(system, "locks", "release", session_id, *args, input=answer)
        assert res.exit_code == 0, res.output
        assert (
            f"before: holder {owner} (incarnation {before.incarnation}), token {before.token}"
            in res.stdout
        )
        assert f"after:  no holder (epoch {before.epoch + 1}, state free)" in res.stdout
        # the pending input goes back to the fleet: someone owns it again, with a newer token
        wait_until(_newer_owner(system, session_id, before), f"{session_id} re-acquired")


def test_locks_release_json(system: System) -> None:
    system.start_long_run("rel-json")
    doc = orjson.loads(ok(system, "locks", "release", "rel-json", "--yes", "-o", "json"))
    assert doc["before"]["state"] == "held"
    assert doc["after"]["holder"] is None


def test_locks_history_shows_the_force_release_and_its_reason(system: System) -> None:
    owner = system.start_long_run("rel-hist")
    ok(system, "locks", "release", "rel-hist", "--yes", "--reason", "stuck in a loop")
    lines = ok(system, "locks", "history", "rel-hist").splitlines()
    forced = [ln for ln in lines if "force_released" in ln]
    assert len(forced) == 1 and owner in forced[0] and "reason: stuck in a loop" in forced[0]
    assert any("acquired" in ln for ln in lines[lines.index(forced[0]) + 1 :])
    doc = orjson.loads(ok(system, "locks", "history", "rel-hist", "-o", "json"))
    events = [e["event"] for e in doc["events"]]
    assert "force_released" in events and events[-1] == "acquired"  # newest first


# -- replicas ---------------------------------------------------------------------------------


def test_replicas_every_format(system: System) -> None:
    table = rows(ok(system, "replicas", "ls"))
    assert table[0] == REPLICA_COLUMNS
    live = {r[0]: r for r in table[1:] if r[-1] == "ready"}
    assert set(system.runners) <= set(live)
    assert all(len(r) == len(REPLICA_COLUMNS) for r in table[1:])
    assert live["ops-r1"][REPLICA_COLUMNS.index("LAST-HEARTBEAT")][-1] == "s"  # an age: 420ms
    wide = rows(ok(system, "replicas", "ls", "-o", "wide"))
    assert wide[0] == REPLICA_WIDE
    bare = rows(ok(system, "replicas", "ls", "--no-headers", "--state", "ready"))
    assert {r[0] for r in bare} >= set(system.runners) and all(r[0] != "REPLICA" for r in bare)
    doc: list[dict[str, Any]] = orjson.loads(ok(system, "replicas", "ls", "-o", "json"))
    assert yaml.safe_load(ok(system, "replicas", "ls", "-o", "yaml"))[0].keys() == doc[0].keys()
    by_id = {r["replica_id"]: r for r in doc}
    for rid in system.runners:
        assert by_id[rid]["state"] == "ready"
        assert by_id[rid]["incarnation"]


def test_replicas_drain_waits_for_exit(system: System) -> None:
    proc = system.fleet.start_runner("ops-drain-me")
    res = run(system, "replicas", "drain", "ops-drain-me", "--wait", "--timeout", "60s")
    assert res.exit_code == 0, res.output
    assert "replica ops-drain-me: draining" in res.stdout
    assert "replica ops-drain-me: gone" in res.stdout
    wait_until(lambda: not proc.alive(), "the drained runner to exit")
    assert proc.popen.returncode == 0


def test_replicas_drain_unknown(system: System) -> None:
    res = run(system, "replicas", "drain", "nobody-here")
    assert res.exit_code == 1
    assert "no live replica 'nobody-here'" in res.stderr


# -- errors and exit codes --------------------------------------------------------------------


def test_unreachable_api_is_exit_1_with_advice() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    res = cli.invoke(app, ["locks", "ls", "--api-url", url, "--admin-token", "x"])
    assert res.exit_code == 1
    assert f"cannot reach the API at {url}" in res.stderr
    assert "STREAMWARD_API_URL" in res.stderr
    assert "Traceback" not in res.output


def test_auth_errors_name_the_setting(system: System) -> None:
    res = cli.invoke(app, ["replicas", "ls"], env={**system.env, "STREAMWARD_ADMIN_TOKEN": "wrong"})
    assert res.exit_code == 1
    assert "--admin-token" in res.stderr and "STREAMWARD_ADMIN_TOKEN" in res.stderr
    res = cli.invoke(app, ["replicas", "ls"], env={**system.env, "STREAMWARD_ADMIN_TOKEN": ""})
    assert res.exit_code == 2
    assert "no admin token" in res.stderr
    # a public token is not an admin token
    res = cli.invoke(app, ["locks", "ls", "--admin-token", TOKEN_A], env=system.env)
    assert res.exit_code == 1 and "refused" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["locks", "ls", "-o", "xml"],
        ["locks", "ls", "--expiring-within", "soon"],
        ["locks", "ls", "--state", "weird"],
        ["locks", "ls", "--no-such-option"],
        ["replicas", "ls", "--interval", "0"],
        ["locks", "show"],
        ["locks", "release", "a/b", "--project", "c"],
    ],
)
def test_usage_errors_are_exit_2(system: System, args: list[str]) -> None:
    res = run(system, *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-1.0, "0ms"),
        (0.85, "850ms"),
        (4.25, "4.2s"),
        (42.9, "42s"),
        (185.0, "3m05s"),
        (7800.0, "2h10m"),
        (4 * 86400 + 5 * 3600.0, "4d5h"),
    ],
)
def test_durations_read_like_kubectl(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


class _NotStreamward(BaseHTTPRequestHandler):
    """Some other web server: HTML everywhere, 404 under /admin/locks."""

    def do_GET(self) -> None:
        status = 404 if self.path.startswith("/admin/locks") else 200
        body = b"<html><body>hello</body></html>"
        self.send_response(status)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pointing_at_another_service_says_so() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotStreamward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for args in (["replicas", "ls"], ["locks", "ls"]):
            res = cli.invoke(app, [*args, "--api-url", url, "--admin-token", "t"])
            assert res.exit_code == 1, res.output
            assert "pointing at a streamward API" in res.stderr
            assert "Traceback" not in res.output
    finally:
        server.shutdown()
        server.server_close()
