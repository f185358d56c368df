"""The runner's start-up question to the API: will it take my transcripts?

A runner whose admin token is missing or refused would otherwise claim sessions and then
fail every ingest forever, while invokes wait for a start that never comes. Asked once,
before anything is claimed: a refusal is fatal (exit 2), an API that is down is waited for.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from streamward.core.backoff import backoff_s

log = logging.getLogger("streamward.runner")

CHECK_PATH = "/admin/sessions/transcripts/ingest"


class TokenRefused(Exception):
    """The API answered, and will not take this runner's transcripts (exit 2)."""


def _refusal(status: int, code: str, has_token: bool, api_url: str) -> str:
    if not has_token:
        return (
            f"no admin token: the API at {api_url} refuses ingest without one ({code}). Pass "
            "--admin-token or set STREAMWARD_ADMIN_TOKEN to the API's admin token."
        )
    if code == "admin_disabled":
        return (
            f"the API at {api_url} has no admin token configured, so it takes no transcripts: "
            "set STREAMWARD_ADMIN_TOKEN on the API and the same value here."
        )
    return (
        f"the API at {api_url} refused this runner's admin token ({status} {code}): set "
        "--admin-token / STREAMWARD_ADMIN_TOKEN to the API's admin token."
    )


async def check_ingest_token(
    api_url: str, admin_token: str | None, *, timeout_s: float = 5.0, max_delay_s: float = 5.0
) -> None:
    """Return once the API accepts the token; raise TokenRefused when it rejects it; wait
    (with backoff, logging) while it cannot be reached or answers 5xx."""
    url = api_url.rstrip("/") + CHECK_PATH
    headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
    attempt = 0
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        while True:
            try:
                resp = await http.get(url, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    return
                if resp.status_code in (401, 403):
                    code = _problem_code(resp)
                    raise TokenRefused(_refusal(resp.status_code, code, bool(admin_token), api_url))
                if resp.status_code == 404:
                    # an API older than this check: it cannot say, ingest will tell
                    log.warning("the API at %s cannot check the admin token (404)", api_url)
                    return
                why = f"HTTP {resp.status_code}"
            delay = backoff_s(attempt, 0.2, max_delay_s)
            attempt += 1
            log.warning("API not reachable yet at %s (%s): retrying in %.1fs", api_url, why, delay)
            await asyncio.sleep(delay)


def _problem_code(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    code = body.get("code") if isinstance(body, dict) else None
    return str(code) if code else f"HTTP {resp.status_code}"
