"""The callback delivery worker: one per API process, started and stopped with the app.

It claims due deliveries from the Redis outbox (``lua.outbox``; a claim lasts the attempt's
timeout + 5 s, so a crashed process's claims come due again for the others), sends each
once, and records the outcome under its claim. At least once: a failure (network error,
timeout, non-2xx, a refused address) is retried with exponential backoff and full jitter
until the retry window ends, then the delivery is dead. A receiver dedupes on
``X-Streamward-Delivery``.

Each attempt re-resolves the URL's host, checks every address (``urlguard``: DNS
rebinding) and connects to the checked address itself, keeping the URL's host for the
Host header and TLS (SNI and certificate). Redirects are not followed; proxies from the
environment are not used (they would connect elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import httpx

from streamward.api.callbacks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    allow_list,
    project_secrets,
    sign,
)
from streamward.api.config import Settings
from streamward.api.metrics import ApiMetrics
from streamward.api.urlguard import UrlRefused, check
from streamward.lua.outbox import Claim, Delivery, Outbox

log = logging.getLogger("streamward.callbacks")
CLAIM_MARGIN_S = 5.0
# at shutdown, attempts in flight get this long to finish and be recorded; cut after it,
# their claims run out and another process sends them again (at least once)
STOP_GRACE_S = 3.0
USER_AGENT = "streamward-callbacks/1"


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^(attempts-1))] after ``attempts``."""
    return random.uniform(0.0, min(max_s, base_s * 2 ** min(attempts - 1, 32)))


class CallbackWorker:
    """Claims and sends due deliveries until ``stop()`` (idempotent)."""

    def __init__(self, outbox: Outbox, settings: Settings, metrics: ApiMetrics | None) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._task is None:
            self._http = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.settings.callback_timeout_s),
                headers={"User-Agent": USER_AGENT},
            )
            self._task = asyncio.create_task(self._run(), name="callback-worker")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=STOP_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _run(self) -> None:
        s = self.settings
        lease_ms = int((s.callback_timeout_s + CLAIM_MARGIN_S) * 1000)
        while not self._stopping.is_set():
            try:
                claims = await self.outbox.claim(lease_ms, s.callback_concurrency)
            except Exception as exc:  # Redis away: try again next poll
                log.warning("callback outbox unavailable: %s", exc)
                claims = []
            if claims:
                await asyncio.gather(*(self._deliver(c) for c in claims))
                continue  # more may be due right away
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), s.callback_poll_s)

    async def _deliver(self, claim: Claim) -> None:
        try:
            d = await self.outbox.get(claim.delivery_id)
            if d is None:  # its record expired: nothing left to send
                await self.outbox.forget(claim.delivery_id)
                return
            ok, code, error = await self._attempt(d)
            s = self.settings
            delay_s = retry_delay_s(d.attempts + 1, s.callback_retry_base_s, s.callback_retry_max_s)
            rec = await self.outbox.record(
                claim, ok, code, error, int(delay_s * 1000), int(s.callback_retry_window_s * 1000)
            )
        except Exception:  # the claim runs out and another attempt follows
            log.exception("callback delivery %s failed", claim.delivery_id)
            return
        m = self.metrics
        if m is not None:
            m.callback_attempts.labels("delivered" if ok else "failed").inc()
            if rec is not None and rec.state == "dead":
                m.callback_dead.inc()
        if rec is None:
            log.info("callback %s: claim lost (another worker took it over)", d.id)
        elif rec.state == "dead":
            log.warning("callback %s dead after %d attempts (%s)", d.id, rec.attempts, error)

    async def _attempt(self, d: Delivery) -> tuple[bool, int | None, str]:
        """One POST: (delivered, status code, error)."""
        secrets = project_secrets(self.settings, d.project)
        if not secrets:
            return False, None, f"no callback secret for project {d.project!r}"
        try:
            return await asyncio.wait_for(self._post(d, secrets), self.settings.callback_timeout_s)
        except TimeoutError:
            return False, None, "timeout"

    async def _post(self, d: Delivery, secrets: list[str]) -> tuple[bool, int | None, str]:
        try:
            target = await check(d.url, allow_list(self.settings))
        except UrlRefused as exc:
            return False, None, f"{exc.code}: {exc.detail}"
        url = httpx.URL(d.url)
        body = d.body.encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Host": url.netloc.decode("ascii"),
            SIGNATURE_HEADER: sign(secrets, ts, body),
            DELIVERY_HEADER: d.id,
            TIMESTAMP_HEADER: str(ts),
            EVENT_HEADER: d.event,
        }
        # connect to the address just checked, not to whatever the name resolves to next
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        assert self._http is not None
        try:
            async with self._http.stream(
                "POST",
                url.copy_with(host=target.ip),
                content=body,
                headers=headers,
                extensions=extensions,
            ) as r:
                code = r.status_code  # the body is not read: only the status counts
        except httpx.TimeoutException:
            return False, None, "timeout"
        except httpx.HTTPError as exc:
            return False, None, f"{type(exc).__name__}: {exc}"[:200]
        if 200 <= code < 300:
            return True, code, ""
        return False, code, f"HTTP {code}"
