"""Structured logs: JSON lines with context fields, trace ids from ``traceparent``, TTY mode."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streamward.core import logs
from tests.ops.conftest import TOKEN_A, System, http_get, wait_until

REQUIRED = {"ts", "level", "msg", "logger", "replica_id", "session_id", "run_id", "token"}


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logs._process.clear()


def test_json_lines_carry_context(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("debug", stream=out, replica_id="r-7")
    log = logging.getLogger("streamward.test")
    log.info("outside")
    with logs.bind(session_id="s1", run_id="run_1", token=4):
        log.warning("inside %s", "a run", extra={"attempt": 2})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [x["msg"] for x in lines] == ["outside", "inside a run", "failed"]
    for x in lines:
        assert set(x) >= REQUIRED
        assert x["replica_id"] == "r-7"
        assert x["ts"].endswith("Z") and "T" in x["ts"]
        assert "trace_id" not in x  # no traceparent came in
    assert lines[0]["session_id"] is None and lines[0]["level"] == "info"
    assert (lines[1]["session_id"], lines[1]["run_id"], lines[1]["token"]) == ("s1", "run_1", 4)
    assert lines[1]["attempt"] == 2 and lines[1]["level"] == "warning"
    assert "ValueError: boom" in lines[2]["exc"]


def test_human_readable_on_a_terminal(restore_logging: None) -> None:
    out = FakeTTY()
    logs.setup_logging("info", stream=out)
    with logs.bind(session_id="s9"):
        logging.getLogger("streamward.test").info("hello")
    line = out.getvalue().strip()
    assert "INFO" in line and "streamward.test: hello" in line and "session_id=s9" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        (
            " 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00 ",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        (  # a future version may append fields
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
        ("00-xyz-00f067aa0ba902b7-01", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(header: str | None, expected: tuple[str, str] | None) -> None:
    assert logs.parse_traceparent(header) == expected


def _api_lines(system: System) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in system.api.log().splitlines() if line.strip()]


def test_api_request_logs_carry_the_trace(system: System) -> None:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    resp = http_get(
        f"{system.url}/v1/sessions/alpha",
        headers={
            "traceparent": f"00-{trace_id}-{span_id}-01",
            "authorization": f"Bearer {TOKEN_A}",
        },
    )
    assert resp.status_code == 200

    def traced() -> list[dict[str, Any]]:
        return [x for x in _api_lines(system) if x.get("trace_id") == trace_id]

    wait_until(lambda: bool(traced()), "the traced request's log line")
    (line,) = traced()
    assert line["span_id"] == span_id
    assert line["logger"] == "streamward.access"
    assert line["msg"] == "GET /v1/sessions/alpha 200"
    assert line["session_id"] == "alpha" and line["status"] == 200
    # every line the API process wrote is JSON with the fields (stdout is a file here)
    lines = _api_lines(system)
    assert any(x["logger"].startswith("uvicorn") for x in lines)  # uvicorn goes through it too
    for x in lines:
        assert set(x) >= REQUIRED, x
    # and a request without a traceparent has no trace ids
    http_get(f"{system.url}/livez")
    wait_until(
        lambda: any(x["msg"] == "GET /livez 200" for x in _api_lines(system)), "the livez line"
    )
    assert all("trace_id" not in x for x in _api_lines(system) if x["msg"] == "GET /livez 200")
