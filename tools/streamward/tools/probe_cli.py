"""``streamward probe``: what Redis is configured, and can streamward run on it?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from streamward.tools.clikit import settings_error

if TYPE_CHECKING:
    from streamward.lua.config import RedisSettings


PROBE_FLAGS = {
    "redis_url": "--redis-url",
    "redis_mode": "--mode",
    "sentinels": "--sentinels",
    "sentinel_master": "--sentinel-master",
}


def probe_settings(**overrides: Any) -> RedisSettings:
    """The Redis fields of ``STREAMWARD_*`` (the names the API and the runner read)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from streamward.lua.config import RedisSettings

    class ProbeSettings(RedisSettings, BaseSettings):
        model_config = SettingsConfigDict(env_prefix="STREAMWARD_", extra="ignore")

    return ProbeSettings(**overrides)


def probe_command(
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (env STREAMWARD_REDIS_URL).")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="standalone | sentinel | cluster (env STREAMWARD_REDIS_MODE)."),
    ] = None,
    sentinels: Annotated[
        str | None,
        typer.Option(help="Sentinels, host:port,... (env STREAMWARD_SENTINELS)."),
    ] = None,
    sentinel_master: Annotated[
        str | None,
        typer.Option(help="Sentinel master name (env STREAMWARD_SENTINEL_MASTER)."),
    ] = None,
    output: Annotated[
        Literal["text", "json"], typer.Option("--output", "-o", help="text or json.")
    ] = "text",
) -> None:
    """Probe Redis: version, mode, scripting. Exit 0 when streamward can run on it, 1 when it
    cannot (says why), 2 when Redis is unreachable or the settings are invalid."""
    import asyncio

    import orjson
    from pydantic import ValidationError
    from redis.exceptions import RedisError

    from streamward.lua.probe import ProbeError, probe_config

    overrides: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_mode": mode,
        "sentinels": sentinels,
        "sentinel_master": sentinel_master,
    }
    try:
        settings = probe_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {settings_error(exc, PROBE_FLAGS)}", err=True)
        raise typer.Exit(2) from None
    cfg = settings.redis_config()
    try:
        found = asyncio.run(probe_config(cfg))
    except ProbeError as exc:
        if output == "json" and exc.found is not None:
            typer.echo(orjson.dumps({**exc.found.as_dict(), "error": str(exc)}).decode())
        else:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (RedisError, OSError) as exc:
        msg = f"cannot reach redis ({cfg.describe()}): {type(exc).__name__}: {exc}"
        if output == "json":
            typer.echo(orjson.dumps({"ok": False, "target": cfg.describe(), "error": msg}).decode())
        else:
            typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    if output == "json":
        typer.echo(orjson.dumps(found.as_dict()).decode())
    else:
        typer.echo(found.line())
