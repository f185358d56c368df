"""``streamward routes`` / ``streamward sources`` against a real API on a real port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import redis.asyncio as aioredis
import yaml
from typer.testing import CliRunner, Result

from streamward.tools.cli import app
from tests.api.helpers import ADMIN_TOKEN

cli = CliRunner()
# `payload.x || x`: valid whether expressions are rooted at the envelope or at the payload
ROUTE_YAML = """\
route_id: gh-mention
source: github
on: [issue_comment.created]
filter: "contains(payload.comment.body || comment.body, '@bot')"
session:
  key_expr: payload.issue.number || issue.number
input_expr: "{text: payload.comment.body || comment.body}"
---
route_id: gh-once
source: github
on: ["*"]
"""


async def run(url: str, *args: str) -> Result:
    env = {"STREAMWARD_API_URL": url, "STREAMWARD_ADMIN_TOKEN": ADMIN_TOKEN}
    # the API serves on this loop: the (synchronous) CLI runs in a thread
    return await asyncio.to_thread(cli.invoke, app, list(args), env=env)


async def ok(url: str, *args: str) -> str:
    res = await run(url, *args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.stdout


async def test_routes_apply_ls_test_delete(
    live_url: str, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(ROUTE_YAML)
    out = await ok(live_url, "routes", "apply", "-f", str(routes_file))
    assert "default/gh-mention applied" in out and "default/gh-once applied" in out
    rows = [line.split() for line in (await ok(live_url, "routes", "ls")).splitlines()]
    assert rows[0] == ["ROUTE", "PROJECT", "SOURCE", "ON", "SESSION"]
    assert rows[1][:3] == ["gh-mention", "default", "github"]
    assert rows[2][0] == "gh-once" and rows[2][-1] == "per-event"

    payload = tmp_path / "payload.json"
    payload.write_bytes(
        orjson.dumps({"action": "created", "issue": {"number": 4}, "comment": {"body": "@bot hi"}})
    )
    dry = yaml.safe_load(
        await ok(
            live_url,
            "routes",
            "test",
            "gh-mention",
            "-f",
            str(payload),
            "--github-event",
            "issue_comment",
        )
    )
    assert dry["action"] == "deliver" and dry["filter_passed"] is True
    assert dry["session_key"] == "4" and dry["session_id"].startswith("gh-mention.")
    assert dry["input"] == {"text": "@bot hi"}
    once = orjson.loads(
        await ok(
            live_url,
            "routes",
            "test",
            "gh-once",
            "-f",
            str(payload),
            "--type",
            "x",
            "--delivery-id",
            "d-1",
            "-o",
            "json",
        )
    )
    assert once["session_id"].startswith("gh-once.once.") and once["session_key"] is None
    # a dry run binds, enqueues and starts nothing
    assert [k async for k in redis_client.scan_iter("sw:{*")] == []

    missing = await run(live_url, "routes", "test", "gh-mention", "-f", str(payload))
    assert missing.exit_code == 2 and "--github-event" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("route_id: x\nsource: s\non: [a]\nfilter: 'a =='\n")
    refused = await run(live_url, "routes", "apply", "-f", str(bad))
    assert refused.exit_code == 1 and "invalid_expression" in refused.output

    await ok(live_url, "routes", "delete", "gh-once")
    gone = await run(live_url, "routes", "delete", "gh-once")
    assert gone.exit_code == 1 and "route_not_found" in gone.output
    assert "gh-once" not in await ok(live_url, "routes", "ls")


async def test_sources_apply_ls_delete(live_url: str, tmp_path: Path) -> None:
    f = tmp_path / "sources.json"
    f.write_bytes(
        orjson.dumps(
            [
                {"source": "github", "kind": "github", "verification": "github", "secret": "s"},
                {
                    "source": "hooks",
                    "verification": "hmac",
                    "secret": "t",
                    "signature_header": "X-Sig",
                },
            ]
        )
    )
    out = await ok(live_url, "sources", "apply", "-f", str(f))
    assert "default/github applied" in out
    listing = await ok(live_url, "sources", "ls")
    rows = [line.split() for line in listing.splitlines()]
    assert rows[0] == ["SOURCE", "PROJECT", "KIND", "VERIFICATION", "SECRET"]
    assert rows[1] == ["github", "default", "github", "github", "set"]
    assert '"s"' not in listing and ": s" not in await ok(live_url, "sources", "ls", "-o", "yaml")
    # what ls prints can be applied again: the secrets stay
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(await ok(live_url, "sources", "ls", "-o", "yaml"))
    await ok(live_url, "sources", "apply", "-f", str(dumped))
    assert "set" in (await ok(live_url, "sources", "ls")).splitlines()[2]
    await ok(live_url, "sources", "delete", "hooks")
    assert "hooks" not in await ok(live_url, "sources", "ls")
