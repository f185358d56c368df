"""A live system for the operator tests: its own redis-server, one API, two real runners."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest

from streamward.client import StreamwardClient
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.server import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

# project B's callers use TOKEN_B; default-project callers TOKEN_A
TOKEN_A = "ops-token-a"
TOKEN_B = "ops-token-b"
PROJECT_B = "proj-b"
SYSTEM_ENV = {
    "STREAMWARD_REPLICA_TTL_MS": "2000",
    # teardown must not wait out the long runs the tests leave running
    "STREAMWARD_DRAIN_TIMEOUT_S": "1",
    "STREAMWARD_LOG_LEVEL": "info",
    "STREAMWARD_API_TOKENS": orjson.dumps({TOKEN_A: "default", TOKEN_B: PROJECT_B}).decode(),
}
LONG_RUN = {"text": "long", "chunks": 1200, "delay_ms": 100}  # ~2 minutes: outlives the tests
WAIT_S = 30.0


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (a deadline, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class System:
    """A running fleet and what the tests need to talk to it."""

    fleet: Fleet
    api: Proc
    runners: dict[str, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def admin_token(self) -> str:
        return self.fleet.admin_token

    @property
    def env(self) -> dict[str, str]:
        """CLI environment pointing at this system."""
        return {"STREAMWARD_API_URL": self.url, "STREAMWARD_ADMIN_TOKEN": self.admin_token}

    def admin(self) -> StreamwardClient:
        return StreamwardClient(self.url, admin_token=self.admin_token)

    def start_long_run(self, session_id: str, token: str = TOKEN_A) -> str:
        """Invoke a long detached run; returns the replica that started it."""
        with StreamwardClient(self.url, token=token) as c:
            accepted = c.invoke(session_id, LONG_RUN)
        assert accepted.status == "running", accepted
        assert accepted.owner is not None
        return accepted.owner.replica_id


def start_system(
    server: RedisServer, runners: int = 2, env: dict[str, str] | None = None
) -> System:
    fleet = Fleet(server.url, env={**SYSTEM_ENV, **(env or {})})
    try:
        api = fleet.start_api()
        system = System(fleet, api)
        for i in range(runners):
            rid = f"ops-r{i + 1}"
            system.runners[rid] = fleet.start_runner(rid)
    except BaseException:
        fleet.stop()
        raise
    return system


@pytest.fixture(scope="package")
def ops_redis() -> Iterator[RedisServer]:
    """A redis-server of their own: other packages' tests flush the shared one."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="package")
def system(ops_redis: RedisServer) -> Iterator[System]:
    """API + runners ops-r1, ops-r2 with sessions ``alpha`` (default) and ``proj-b/beta``."""
    s = start_system(ops_redis)
    try:
        s.start_long_run("alpha")
        s.start_long_run("beta", TOKEN_B)
        yield s
    finally:
        s.fleet.stop()


def http_get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(url, headers=headers or {}, timeout=10.0)


# -- the live page in headless Chromium (test_ui*.py) ----------------------------------------
# Needs Debian's ``chromium`` (``make test`` installs it when it runs as root with apt) and the
# ``playwright`` Python package (dev extra) driving it with ``executable_path``; Playwright's
# own browser download is never used. Skipped, saying why, only when Chromium is missing or
# cannot start here.

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("STREAMWARD_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> Iterator[BrowserContext]:
    """A fresh headless Chromium profile (its own --user-data-dir)."""
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "chromium not found (install Debian's package: apt-get install -y chromium; "
            "`make test` does it when run as root)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package (dev extra) is not installed"
    )
    profile = tempfile.mkdtemp(prefix="streamward-chromium-")
    with sync_api.sync_playwright() as pw:
        try:
            ctx = pw.chromium.launch_persistent_context(
                profile,
                executable_path=exe,
                headless=True,
                args=LAUNCH_ARGS,
                viewport={"width": 1280, "height": 800},
            )
        except sync_api.Error as exc:
            pytest.skip(f"chromium at {exe} cannot be launched here: {str(exc)[:500]}")
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def open_page(ctx: BrowserContext, system: System, token: str, query: str = "") -> Page:
    """The live page, logged in with ``token``."""
    page = ctx.new_page()
    page.goto(f"{system.url}/admin/ui{query}")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    return page
