"""Small pieces every ``streamward`` command shares: one-line settings errors, the port
check, and help output without noise."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

T = TypeVar("T")

ENV_PREFIX = "STREAMWARD_"


def version() -> str:
    try:
        return metadata.version("streamward")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        return "unknown"


def settings_error(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """One line per wrong setting, naming the env var (and the flag, when one sets it),
    the value given and what is expected: never pydantic's multi-line dump."""
    flags = flags or {}
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        name = f"{ENV_PREFIX}{field.split('.')[0].upper()}"
        if field in flags:
            name = f"{flags[field]} / {name}"
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {_short(given)})"
        parts.append(f"{name}: {err.get('msg', 'invalid')}{shown}")
    return "invalid setting: " + "; ".join(parts)


def settings_or_exit(make: Callable[[], T], flags: dict[str, str] | None = None) -> T:
    """``make()`` (a settings constructor), or exit 2 with the one-line error."""
    try:
        return make()
    except ValidationError as exc:
        typer.echo(f"error: {settings_error(exc, flags)}", err=True)
        raise typer.Exit(2) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def port_in_use(port: int, flag: str, command: str) -> str:
    return (
        f"port {port} is in use (another streamward or another server?). "
        f"Pick another with `streamward {command} {flag} {port + 1}`, or stop what holds it."
    )


def quiet_flags(command: Any) -> Any:
    """Drop the type shown after flags that take no value (typer prints ``<bool>`` for
    ``--yes`` and ``--help``), across the whole command tree. Duck-typed: typer carries its
    own copy of click, whose classes are not ``click``'s."""
    ctx = type(command).context_class(command)
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        quiet_flags(sub)
    return command
