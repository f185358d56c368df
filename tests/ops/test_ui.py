"""The live ownership page in headless Chromium against a running system, through a takeover.

Needs Debian's ``chromium`` (``make test`` installs it when it runs as root with apt) and the
``playwright`` Python package (dev extra) driving it with ``executable_path``; Playwright's own
browser download is never used. Skipped, saying why, only when Chromium is missing or cannot
start here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from streamward.tools.server import RedisServer
from tests.ops.conftest import WAIT_MS, System, open_page, start_system

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page


@pytest.fixture
def page_system() -> Iterator[System]:
    """Its own Redis and fleet: this test kills a runner."""
    server = RedisServer().start()
    try:
        system = start_system(server)
        try:
            yield system
        finally:
            system.fleet.stop()
    finally:
        server.cleanup()


def test_page_follows_a_takeover(
    browser: BrowserContext, page_system: System, tmp_path: Path
) -> None:
    system = page_system
    owner = system.start_long_run("page-s")
    other = next(r for r in system.runners if r != owner)
    page = open_page(browser, system, system.admin_token)
    for rid in system.runners:
        page.wait_for_selector(f'[data-replica="{rid}"][data-state="ready"]', timeout=WAIT_MS)
    before = f'[data-replica="{owner}"] [data-session="default/page-s"]'
    page.wait_for_selector(before, timeout=WAIT_MS)
    token_before = page.get_attribute(before, "data-token")

    system.runners[owner].kill()

    after = f'[data-replica="{other}"] [data-session="default/page-s"]'
    page.wait_for_selector(after, timeout=WAIT_MS)
    assert int(page.get_attribute(after, "data-token") or 0) > int(token_before or 0)
    page.wait_for_selector(f"{after}.takeover", timeout=WAIT_MS)  # highlighted as it happens
    events = page.inner_text("#event-list")
    assert f"default/page-s: {owner}" in events and f"→ {other}" in events
    assert page.locator(before).count() == 0
    page.screenshot(path=str(tmp_path / "ownership.png"), full_page=True)

    # the CLI's filters: only the surviving replica, then a project with no sessions
    page.fill("#f-replica", other)
    page.dispatch_event("#f-replica", "change")
    page.wait_for_function(
        "n => document.querySelectorAll('[data-replica]').length === n", arg=1, timeout=WAIT_MS
    )
    assert page.get_attribute("[data-replica]", "data-replica") == other
    assert "replica=" in page.url  # filters live in the URL: shareable, kept on reload
    page.fill("#f-project", "no-such-project")
    page.dispatch_event("#f-project", "change")
    page.wait_for_selector(
        f'[data-replica="{other}"] .empty', timeout=WAIT_MS
    )  # no sessions in that project


def test_page_rejects_a_wrong_token(browser: BrowserContext, system: System) -> None:
    page = open_page(browser, system, "not-the-token")
    page.wait_for_function(
        "() => document.getElementById('login-error').textContent.length > 0", timeout=WAIT_MS
    )
    assert "not valid" in page.inner_text("#login-error")
    assert page.is_hidden("#app")
    # nothing was kept: a reload asks again
    page.reload()
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)


def test_page_is_served_without_a_token_and_locked_down(system: System) -> None:
    resp = httpx.get(f"{system.url}/admin/ui")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    # the data behind it still needs the admin token
    assert httpx.get(f"{system.url}/admin/replicas").status_code == 401


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _offline(page: Page) -> list[str]:
    """Abort every request to a non-local host and return the list they are recorded in
    (the docs pages must not need one: an empty list is the assertion)."""
    from urllib.parse import urlsplit

    outside: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", handle)
    return outside


def test_swagger_ui_renders_offline_and_authorizes(browser: BrowserContext, system: System) -> None:
    """/docs renders every operation from the bundled assets alone, and its Authorize
    dialog takes the admin token, which an admin operation then runs with."""
    page = browser.new_page()
    outside = _offline(page)
    page.goto(f"{system.url}/docs")
    page.wait_for_selector(".opblock", timeout=WAIT_MS)
    assert page.locator(".opblock").count() > 20
    page.click(".auth-wrapper .authorize")
    page.wait_for_selector(".auth-container", timeout=WAIT_MS)
    names = page.locator(".auth-container h4").all_inner_texts()
    assert any("userBearer" in n for n in names) and any("adminBearer" in n for n in names)
    admin = page.locator(".auth-container").filter(has_text="adminBearer")
    admin.locator("input").fill(system.admin_token)
    admin.locator("button.authorize").click()
    page.click(".btn-done")
    block = page.locator(".opblock-get").filter(
        has=page.locator('.opblock-summary-path[data-path="/admin/replicas"]')
    )
    block.locator(".opblock-summary").first.click()
    block.locator(".try-out__btn").click()
    block.locator(".execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=WAIT_MS)
    assert status.inner_text().strip() == "200"
    assert outside == []


def test_redoc_renders_offline(browser: BrowserContext, system: System) -> None:
    page = browser.new_page()
    outside = _offline(page)
    page.goto(f"{system.url}/redoc")
    # redoc renders one section per operation, each with an id "operation/<operationId>"
    page.wait_for_selector('[id^="operation/"]', timeout=WAIT_MS)
    assert page.locator('[id^="operation/"]').count() > 20
    assert outside == []
