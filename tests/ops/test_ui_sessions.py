"""The live page's sessions view in headless Chromium against a running system: the list and
its filters, a session's transcript followed live through the resumable SSE stream (across a
dropped connection), its runs and their states, and its ownership moves.

Chromium and playwright as for test_ui.py (fixtures in conftest.py); skipped, saying why,
when Chromium is missing or cannot start here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from streamward.tools.server import RedisServer
from tests.ops.conftest import TOKEN_A, WAIT_MS, System, open_page, start_system, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

# ~8 s of outputs, one every 200 ms: long enough to watch it run, short enough to see it end
SLOW_RUN = {"text": "live-ui", "chunks": 40, "delay_ms": 200}


@pytest.fixture(scope="module")
def ui_system() -> Iterator[System]:
    """Its own Redis and one runner: these tests create sessions the listing shows."""
    server = RedisServer().start()
    try:
        system = start_system(server, runners=1)
        try:
            yield system
        finally:
            system.fleet.stop()
    finally:
        server.cleanup()


def _user(system: System) -> httpx.Client:
    return httpx.Client(
        base_url=system.url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=10.0
    )


def _create(system: System, session_id: str, **fields: object) -> None:
    with _user(system) as c:
        resp = c.post("/v1/sessions", json={"id": session_id, **fields})
    assert resp.status_code == 201, resp.text


def _sessions_view(browser: BrowserContext, system: System) -> Page:
    page = open_page(browser, system, system.admin_token)
    page.click("#tab-sessions")
    page.wait_for_selector("#sessions-view:not([hidden])", timeout=WAIT_MS)
    return page


def _listed(page: Page) -> list[str]:
    ids = page.eval_on_selector_all(
        "#session-list tr[data-session-id]", "rows => rows.map(r => r.dataset.sessionId)"
    )
    return [str(i) for i in ids]


def test_a_running_invoke_streams_into_the_open_session(
    browser: BrowserContext, ui_system: System, tmp_path: Path
) -> None:
    system = ui_system
    _create(system, "ui-live", title="watched from the page")
    page = _sessions_view(browser, system)
    row = '#session-list tr[data-session-id="ui-live"]'
    page.wait_for_selector(row, timeout=WAIT_MS)
    page.click(row)
    page.wait_for_selector("#stream-state[data-state=live]", timeout=WAIT_MS)
    assert "session=default%2Fui-live" in page.url  # the open session is in the URL

    with _user(system) as c:
        resp = c.post("/v1/sessions/ui-live/invoke", json={"input": SLOW_RUN, "mode": "detached"})
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]
        owner = resp.json()["owner"]["replica_id"]

        # the first outputs are on screen while the run still runs: they came live
        page.wait_for_selector(
            f'#transcript li[data-type="run.output"][data-run-id="{run_id}"]', timeout=WAIT_MS
        )
        live = c.get("/v1/sessions/ui-live/liveness").json()
        assert live["active_run_id"] == run_id, live
        page.wait_for_selector(
            f'#run-list tr[data-run-id="{run_id}"][data-status="running"]', timeout=WAIT_MS
        )
        # the owner column of the list names the replica running it
        page.wait_for_selector(f'{row} td[data-owner="{owner}"]', timeout=WAIT_MS)

        # drop the page's stream mid-run (detach ends every stream of the session): the
        # page resumes with Last-Event-ID, as a client does
        assert c.post("/v1/sessions/ui-live/detach", json={}).status_code == 200
        page.wait_for_function(
            "() => { const s = document.getElementById('stream-state');"
            " return s.dataset.state === 'live' && Number(s.dataset.reconnects) >= 1; }",
            timeout=WAIT_MS,
        )
        assert c.get("/v1/sessions/ui-live/liveness").json()["active_run_id"] == run_id

    page.wait_for_selector(
        f'#run-list tr[data-run-id="{run_id}"][data-status="completed"]', timeout=WAIT_MS
    )
    page.wait_for_selector(
        f'#transcript li[data-type="run.completed"][data-run-id="{run_id}"]', timeout=WAIT_MS
    )
    # every output exactly once, in order, across the reconnect
    seqs = page.eval_on_selector_all(
        f'#transcript li[data-type="run.output"][data-run-id="{run_id}"]',
        "items => items.map(i => Number(i.dataset.seq))",
    )
    assert len(seqs) == SLOW_RUN["chunks"]
    assert seqs == sorted(set(seqs))
    outputs = page.inner_text(f'#run-list tr[data-run-id="{run_id}"]')
    assert str(SLOW_RUN["chunks"]) in outputs and owner in outputs

    # ownership: the acquisition, then a force release with the operator's reason
    page.wait_for_selector(
        f'#ownership-list li[data-event="acquired"][data-replica="{owner}"]', timeout=WAIT_MS
    )
    assert "No record is configured" in page.inner_text("#ownership-source")
    assert owner in page.inner_text("#lease-line")
    released = httpx.post(
        f"{system.url}/admin/locks/ui-live/release",
        params={"reason": "ui-check"},
        headers={"Authorization": f"Bearer {system.admin_token}"},
        timeout=10.0,
    )
    assert released.status_code == 200, released.text
    page.wait_for_selector('#ownership-list li[data-event="force_released"]', timeout=WAIT_MS)
    assert "reason: ui-check" in page.inner_text('#ownership-list li[data-event="force_released"]')
    page.screenshot(path=str(tmp_path / "sessions.png"), full_page=True)

    # the leases view closes the pane's stream (an attached stream keeps a session from
    # passivating); back on sessions, the same session opens again
    with _user(system) as c:

        def attached() -> int:
            return int(c.get("/v1/sessions/ui-live/liveness").json()["attached"])

        assert attached() >= 1
        page.click("#tab-leases")
        wait_until(lambda: attached() == 0, "the hidden pane's stream to end")
        page.click("#tab-sessions")
        page.wait_for_selector("#stream-state[data-state=live]", timeout=WAIT_MS)
        wait_until(lambda: attached() >= 1, "the pane's stream to be back")
        assert page.inner_text("#d-id") == "ui-live"

    # the URL keeps the view and the open session: a reload (or a shared link) reopens it,
    # from the leases view too once it switches back
    page.reload()
    page.wait_for_selector("#stream-state[data-state=live]", timeout=WAIT_MS)
    assert page.inner_text("#d-id") == "ui-live"
    page.click("#tab-leases")
    page.reload()
    page.wait_for_selector("#leases-view:not([hidden])", timeout=WAIT_MS)
    page.click("#tab-sessions")
    page.wait_for_selector("#stream-state[data-state=live]", timeout=WAIT_MS)
    assert page.inner_text("#d-id") == "ui-live"


def test_filters_narrow_the_session_list(browser: BrowserContext, ui_system: System) -> None:
    system = ui_system
    _create(system, "flt-alpha", type="kind-a", title="<b>first</b>")
    _create(system, "flt-beta", type="kind-b")
    _create(system, "flt-gamma", type="kind-a")
    with _user(system) as c:  # an invoked one: status active
        resp = c.post(
            "/v1/sessions/flt-run/invoke", json={"input": {"text": "x"}, "mode": "detached"}
        )
        assert resp.status_code == 202, resp.text
    page = _sessions_view(browser, system)

    def narrowed_to(expected: set[str]) -> None:
        page.wait_for_function(
            "ids => { const got = [...document.querySelectorAll("
            "'#session-list tr[data-session-id]')].map(r => r.dataset.sessionId).sort();"
            " return JSON.stringify(got) === JSON.stringify(ids); }",
            arg=sorted(expected),
            timeout=WAIT_MS,
        )

    page.fill("#s-text", "flt-")  # on the page: id, title, route, type, owner
    narrowed_to({"flt-alpha", "flt-beta", "flt-gamma", "flt-run"})
    # caller data is text, never markup
    assert "<b>first</b>" in page.inner_text('#session-list tr[data-session-id="flt-alpha"]')
    assert page.locator("#session-list b").count() == 0

    page.fill("#s-type", "kind-a")  # server side: GET /v1/sessions?type=kind-a
    page.dispatch_event("#s-type", "change")
    narrowed_to({"flt-alpha", "flt-gamma"})
    assert "type=kind-a" in page.url  # shareable, kept on reload

    page.fill("#s-type", "")
    page.dispatch_event("#s-type", "change")
    page.select_option("#s-status", "active")  # server side: status=active
    narrowed_to({"flt-run"})
    owner = page.get_attribute(
        '#session-list tr[data-session-id="flt-run"] td[data-owner]', "data-owner"
    )
    assert owner in system.runners

    page.select_option("#s-status", "")
    page.fill("#s-text", "BETA")
    narrowed_to({"flt-beta"})

    page.fill("#s-text", "no-such-session")
    page.wait_for_selector("#sessions-empty:not([hidden])", timeout=WAIT_MS)
    assert _listed(page) == []


@pytest.fixture
def takeover_system() -> Iterator[System]:
    """Its own Redis and two runners: this test kills one."""
    server = RedisServer().start()
    try:
        system = start_system(server)
        try:
            yield system
        finally:
            system.fleet.stop()
    finally:
        server.cleanup()


def test_a_takeover_shows_as_a_move_an_interruption_and_a_restart(
    browser: BrowserContext, takeover_system: System
) -> None:
    system = takeover_system
    _create(system, "ui-take")
    page = _sessions_view(browser, system)
    row = '#session-list tr[data-session-id="ui-take"]'
    page.wait_for_selector(row, timeout=WAIT_MS)
    page.click(row)
    page.wait_for_selector("#stream-state[data-state=live]", timeout=WAIT_MS)
    with _user(system) as c:
        resp = c.post("/v1/sessions/ui-take/invoke", json={"input": SLOW_RUN, "mode": "detached"})
    assert resp.status_code == 202, resp.text
    run_id, owner = resp.json()["run_id"], resp.json()["owner"]["replica_id"]
    other = next(r for r in system.runners if r != owner)
    page.wait_for_selector(
        f'#transcript li[data-type="run.output"][data-run-id="{run_id}"]', timeout=WAIT_MS
    )

    system.runners[owner].kill()

    move = f'#ownership-list li[data-event="taken_over"][data-replica="{other}"]'
    page.wait_for_selector(move, timeout=WAIT_MS)
    assert f"reason: from {owner}|" in page.inner_text(move)  # the previous owner
    page.wait_for_selector(
        f'#transcript li[data-type="run.interrupted"][data-run-id="{run_id}"]', timeout=WAIT_MS
    )
    done = f'#run-list tr[data-run-id="{run_id}"][data-status="completed"]'
    page.wait_for_selector(done, timeout=WAIT_MS)
    cells = page.eval_on_selector_all(f"{done} td", "tds => tds.map(td => td.textContent)")
    assert cells[2:5] == [other, cells[3], "2"]  # the new owner's second attempt
    assert int(cells[3]) > 1  # a newer token
