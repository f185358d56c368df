"""``streamward token``: make a new scoped token, or hash one, for ``STREAMWARD_TOKENS``."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import orjson
import typer

from streamward.api.tokens import SCOPES, TokenSpec, token_digest

token_app = typer.Typer(
    help="Scoped API tokens: the server keeps only their SHA-256 (docs/api.md, Auth).",
    no_args_is_help=True,
)


@token_app.command("hash")
def hash_command(
    token: Annotated[
        str | None,
        typer.Argument(help="The token; read from stdin when absent (keeps it out of history)."),
    ] = None,
) -> None:
    """Print the SHA-256 hex of a token: the ``sha256`` of its STREAMWARD_TOKENS entry."""
    value = token if token is not None else sys.stdin.readline().strip()
    if not value:
        raise typer.BadParameter("empty token")
    typer.echo(token_digest(value))


@token_app.command("new")
def new_command(
    project: Annotated[str, typer.Option(help="The project the token acts in.")],
    scope: Annotated[
        list[str],
        typer.Option(help=f"A scope, repeatable: {', '.join(SCOPES)} (admin implies all)."),
    ],
    name: Annotated[str, typer.Option(help="A label for logs and rotation.")] = "",
) -> None:
    """Generate a random token and print JSON: the token (give it to the caller, once) and
    its entry for STREAMWARD_TOKENS / the tokens file (the server never sees the token)."""
    token = secrets.token_urlsafe(32)
    try:
        entry = TokenSpec.model_validate(
            {"sha256": token_digest(token), "project": project, "scopes": scope, "name": name}
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None
    out = {"token": token, "entry": entry.model_dump(mode="json")}
    typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
