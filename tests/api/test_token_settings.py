"""The token settings: hashed tokens from the environment or a file, the legacy plaintext
settings mapped into the same table, the start-up refusals, ``streamward token``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from streamward.api.config import Settings
from streamward.api.serving import auth_refusal
from streamward.api.tokens import (
    ADMIN,
    ROUTES_ADMIN,
    SESSIONS_RUN,
    SESSIONS_VIEW,
    TokenConfigError,
    TokenSpec,
    build_table,
    token_digest,
)
from streamward.tools.cli import app as cli
from tests.api.conftest import SettingsFactory, asgi_client, running_app
from tests.api.helpers import assert_problem


def spec(token: str, project: str, *scopes: str, name: str = "") -> dict[str, object]:
    return {"sha256": token_digest(token), "project": project, "scopes": list(scopes), "name": name}


def entry(token: str, project: str, *scopes: str) -> TokenSpec:
    return TokenSpec.model_validate(spec(token, project, *scopes))


def test_digest_is_sha256_hex() -> None:
    assert token_digest("abc") == hashlib.sha256(b"abc").hexdigest()


def test_env_json_list_and_legacy_settings_share_one_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "STREAMWARD_TOKENS", json.dumps([spec("h1", "p1", SESSIONS_VIEW, name="ci")])
    )
    monkeypatch.setenv("STREAMWARD_API_TOKENS", json.dumps({"plain": "p2"}))
    monkeypatch.setenv("STREAMWARD_ADMIN_TOKEN", "root")
    table = build_table(Settings())
    assert table.v1_auth
    viewer = table.lookup("h1")
    assert viewer is not None and (viewer.project, set(viewer.scopes)) == ("p1", {SESSIONS_VIEW})
    legacy = table.lookup("plain")
    assert legacy is not None and legacy.project == "p2"
    assert legacy.scopes == {SESSIONS_RUN, SESSIONS_VIEW}
    root = table.lookup("root")
    assert root is not None and root.project == "default"
    assert root.scopes == {SESSIONS_RUN, SESSIONS_VIEW, ROUTES_ADMIN, ADMIN}
    assert table.lookup("nope") is None
    assert table.projects == {"p1", "p2", "default"}
    assert table.lookup(token_digest("h1")) is None  # the digest itself is not a token


def test_admin_token_alone_leaves_v1_open_as_before() -> None:
    table = build_table(Settings(admin_token="root"))
    assert not table.v1_auth and table.grants(ADMIN)
    assert auth_refusal(Settings(host="0.0.0.0", admin_token="root")) is not None


def test_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenSpec.model_validate({"sha256": "zz", "scopes": [ADMIN]})
    with pytest.raises(ValueError):
        entry("t", "p", "sessions:write")
    with pytest.raises(ValueError):
        entry("t", "p")  # no scope
    with pytest.raises(ValueError):
        TokenSpec.model_validate({**spec("t", "p", ADMIN), "extra": 1})


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps([spec("f1", "pf", SESSIONS_RUN)]))
    settings = Settings(host="0.0.0.0", tokens_file=str(path))
    assert auth_refusal(settings) is None  # a token file opens a public bind
    found = build_table(settings).lookup("f1")
    assert found is not None and found.project == "pf"
    path.write_text('[{"sha256": "12"}]')
    with pytest.raises(TokenConfigError, match=r"tokens.json: 0.sha256"):
        build_table(settings)
    with pytest.raises(TokenConfigError, match="No such file"):
        build_table(Settings(tokens_file=str(tmp_path / "missing.json")))


def test_public_bind_refusal_considers_every_token_setting() -> None:
    public = "0.0.0.0"
    assert auth_refusal(Settings(host=public)) is not None
    assert auth_refusal(Settings(host=public, api_tokens={"t": "p"})) is None
    assert auth_refusal(Settings(host=public, tokens=[entry("t", "p", SESSIONS_VIEW)])) is None
    assert auth_refusal(Settings(host=public, insecure_no_auth=True)) is None


def test_serve_refuses_an_unreadable_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamward.api import main
    from streamward.api.config import get_settings

    monkeypatch.setenv("STREAMWARD_TOKENS_FILE", str(tmp_path / "missing.json"))
    get_settings.cache_clear()
    try:
        assert main.serve(port=1) == 2
    finally:
        get_settings.cache_clear()
    assert "STREAMWARD_TOKENS_FILE" in capsys.readouterr().err


async def test_file_tokens_and_legacy_tokens_work_together(
    make_settings: SettingsFactory, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps([spec("hashed", "pa", SESSIONS_RUN, SESSIONS_VIEW)]))
    settings = make_settings(tokens_file=str(path), api_tokens={"legacy": "pa"}, start_timeout_s=0)
    async with running_app(settings) as app, asgi_client(app) as c:
        for token in ("hashed", "legacy"):
            auth = {"Authorization": f"Bearer {token}"}
            r = await c.post("/v1/sessions/s1/invoke", json={"mode": "detached"}, headers=auth)
            assert r.status_code == 202
        # the legacy admin token (tests' ADMIN_TOKEN) is the admin scope: it reads /v1 too
        r = await c.get("/v1/sessions", headers={"Authorization": "Bearer test-admin-token"})
        assert r.status_code == 200
        r = await c.get("/admin/replicas", headers={"Authorization": "Bearer hashed"})
        assert_problem(r, 403, "insufficient_scope")


def test_token_cli_new_and_hash() -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["token", "hash", "s3cret"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == token_digest("s3cret")
    r = runner.invoke(
        cli, ["token", "new", "--project", "p1", "--scope", SESSIONS_VIEW, "--name", "dash"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["entry"] == {
        "sha256": token_digest(out["token"]),
        "project": "p1",
        "scopes": [SESSIONS_VIEW],
        "name": "dash",
    }
    assert len(out["token"]) >= 40
    r = runner.invoke(cli, ["token", "new", "--project", "p1", "--scope", "nope"])
    assert r.exit_code != 0


def test_token_hash_reads_stdin() -> None:
    r = CliRunner().invoke(cli, ["token", "hash"], input="from-stdin\n")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == token_digest("from-stdin")


async def test_client_sees_insufficient_scope(
    make_settings: SettingsFactory, redis_client: aioredis.Redis
) -> None:
    settings = make_settings(tokens=[entry("viewer", "pv", SESSIONS_VIEW)])
    async with running_app(settings) as app, asgi_client(app) as c:
        r = await c.post(
            "/v1/sessions/s1/cancel", headers={"Authorization": "Bearer viewer"}, json=None
        )
        body = assert_problem(r, 403, "insufficient_scope")
        assert body["required_scope"] == SESSIONS_RUN
        assert r.headers["www-authenticate"] == (
            'Bearer error="insufficient_scope" scope="sessions:run"'
        )
        assert isinstance(c, httpx.AsyncClient)
