"""``streamward routes`` and ``streamward sources``: event routes and sources over the admin API.

``routes test`` is a dry run through the API's own evaluation (``POST /admin/routes/{id}/test``):
it prints what a payload would produce and enqueues nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
import yaml

from streamward.client import StreamwardAPIError
from streamward.tools.sre import (
    DEFAULT_API_URL,
    AdminToken,
    ApiUrl,
    NoHeaders,
    Output,
    OutputOpt,
    _dump,
    _errors,
    _fail,
    _stdout,
    _table,
)

routes_app = typer.Typer(
    help="Event routes: list, apply from YAML/JSON, delete, dry-run a payload.",
    no_args_is_help=True,
    add_completion=False,
)
sources_app = typer.Typer(
    help="Event sources: kind and signature verification (secrets are never shown).",
    no_args_is_help=True,
    add_completion=False,
)
FileOpt = Annotated[
    Path, typer.Option("-f", "--file", exists=True, dir_okay=False, help="YAML or JSON file.")
]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="The route's project.")]
ROUTE_COLUMNS = ["ROUTE", "PROJECT", "SOURCE", "ON", "SESSION"]
SOURCE_COLUMNS = ["SOURCE", "PROJECT", "KIND", "VERIFICATION", "SECRET"]


def _call(method: str, api_url: str, token: str | None, path: str, **kwargs: Any) -> Any:
    """One admin call; problem+json answers raise StreamwardAPIError (explained by _errors)."""
    if not token:
        _fail("no admin token: set --admin-token or STREAMWARD_ADMIN_TOKEN", code=2)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, timeout=10.0) as client:
        resp = client.request(method, path, headers=headers, **kwargs)
    try:
        body = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        body = None
    if resp.status_code >= 400:
        problem = body if isinstance(body, dict) else {"code": f"http_{resp.status_code}"}
        code = str(problem.get("code", f"http_{resp.status_code}"))
        raise StreamwardAPIError(resp.status_code, code, problem.get("detail"), problem)
    return body


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML or JSON file (a list, or YAML's ``---`` separated documents)."""
    try:
        docs: list[Any] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        _fail(f"{path}: not YAML or JSON: {exc}", code=2)
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = docs[0]
    if not docs or not all(isinstance(d, dict) for d in docs):
        _fail(f"{path}: expected one or more mappings", code=2)
    # YAML 1.1 reads an unquoted `on:` key as the boolean true: give routes their `on` back
    return [{("on" if k is True else k): v for k, v in d.items()} for d in docs]


def _session_text(route: dict[str, Any]) -> str:
    s = route.get("session")
    if not isinstance(s, dict):
        return "per-event"
    return str(s.get("key_expr") or f"template:{s.get('key_template')}")


def _listing(
    path: str, project: str | None, output: Output, api_url: str, admin_token: str | None
) -> list[dict[str, Any]] | None:
    """A listing's items for a table, or None once printed as JSON / YAML."""
    params = {} if project is None else {"project": project}
    with _errors(api_url):
        items: list[dict[str, Any]] = _call("GET", api_url, admin_token, path, params=params)[
            "items"
        ]
    if output in (Output.json, Output.yaml):
        typer.echo(_dump(items, output))
        return None
    return items


# -- routes ------------------------------------------------------------------------------------


@routes_app.command("ls")
def routes_ls(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project.")
    ] = None,
    output: OutputOpt = Output.table,
    no_headers: NoHeaders = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """List routes: id, project, source, event types and session key."""
    items = _listing("/admin/routes", project, output, api_url, admin_token)
    if items is None:
        return
    rows = [
        [r["route_id"], r["project"], r["source"], ",".join(r["on"]), _session_text(r)]
        for r in items
    ]
    _stdout().print(_table(ROUTE_COLUMNS, rows, not no_headers))


@routes_app.command("apply")
def routes_apply(
    file: FileOpt,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Create or replace every route in the file (expressions are checked by the API)."""
    with _errors(api_url):
        for doc in load_docs(file):
            _call("POST", api_url, admin_token, "/admin/routes", json=doc)
            typer.echo(f"route {doc.get('project', 'default')}/{doc.get('route_id')} applied")


@routes_app.command("delete")
def routes_delete(
    route_id: Annotated[str, typer.Argument(help="Route id.")],
    project: ProjectOpt = "default",
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Delete a route (its sessions stay readable)."""
    with _errors(api_url):
        _call(
            "DELETE", api_url, admin_token, f"/admin/routes/{route_id}", params={"project": project}
        )
    typer.echo(f"route {project}/{route_id} deleted")


def event_type(payload: Any, type_: str | None, github_event: str | None) -> str:
    """``--type`` as given, or GitHub's ``<X-GitHub-Event>.<action>`` rule."""
    if type_ is not None:
        return type_
    if github_event is not None:
        action = payload.get("action") if isinstance(payload, dict) else None
        return f"{github_event}.{action}" if isinstance(action, str) and action else github_event
    raise typer.BadParameter("pass --type T or --github-event E", param_hint="--type")


@routes_app.command("test")
def routes_test(
    route_id: Annotated[str, typer.Argument(help="Route id.")],
    file: FileOpt,
    type_: Annotated[str | None, typer.Option("--type", "-t", help="The event type.")] = None,
    github_event: Annotated[
        str | None,
        typer.Option("--github-event", help="X-GitHub-Event; the type adds the payload's action."),
    ] = None,
    delivery_id: Annotated[
        str | None, typer.Option("--delivery-id", help="For the session id of per-event routes.")
    ] = None,
    project: ProjectOpt = "default",
    output: Annotated[
        Output, typer.Option("-o", "--output", help="json or yaml.", case_sensitive=False)
    ] = Output.yaml,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Dry run: filter result, key, session id and input the route makes of a payload file.
    Nothing is enqueued."""
    try:
        payload = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        _fail(f"{file}: not JSON: {exc}", code=2)
    body: dict[str, Any] = {"type": event_type(payload, type_, github_event), "payload": payload}
    if delivery_id is not None:
        body["delivery_id"] = delivery_id
    with _errors(api_url):
        result = _call(
            "POST",
            api_url,
            admin_token,
            f"/admin/routes/{route_id}/test",
            params={"project": project},
            json=body,
        )
    typer.echo(_dump(result, Output.json if output is Output.json else Output.yaml))


# -- sources -----------------------------------------------------------------------------------


@sources_app.command("ls")
def sources_ls(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project.")
    ] = None,
    output: OutputOpt = Output.table,
    no_headers: NoHeaders = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """List configured sources (a source not listed is generic and unverified)."""
    items = _listing("/admin/sources", project, output, api_url, admin_token)
    if items is None:
        return
    rows = [
        [s["source"], s["project"], s["kind"], s["verification"], "set" if s["has_secret"] else "-"]
        for s in items
    ]
    _stdout().print(_table(SOURCE_COLUMNS, rows, not no_headers))


@sources_app.command("apply")
def sources_apply(
    file: FileOpt,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Create or replace every source in the file (each names its ``source``; a ``secret``
    left out keeps the stored one)."""
    with _errors(api_url):
        for doc in load_docs(file):
            doc = dict(doc)
            name, project = doc.pop("source", None), doc.pop("project", "default")
            doc.pop("has_secret", None)  # as `sources ls -o yaml` prints it
            if not isinstance(name, str):
                _fail(f"{file}: every source needs a `source` name", code=2)
            path = f"/admin/sources/{name}"
            _call("PUT", api_url, admin_token, path, params={"project": project}, json=doc)
            typer.echo(f"source {project}/{name} applied")


@sources_app.command("delete")
def sources_delete(
    source: Annotated[str, typer.Argument(help="Source name.")],
    project: ProjectOpt = "default",
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Delete a source: its deliveries are generic and unverified again."""
    with _errors(api_url):
        path = f"/admin/sources/{source}"
        _call("DELETE", api_url, admin_token, path, params={"project": project})
    typer.echo(f"source {project}/{source} deleted")
