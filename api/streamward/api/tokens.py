"""Scoped bearer tokens: the configured table (hashed), the scope each route needs, and the
check every guarded request makes.

A token carries a project and scopes (``sessions:run``, ``sessions:view``, ``routes:admin``,
``admin``; ``admin`` implies every other). Tokens are configured as the SHA-256 of the token
(``STREAMWARD_TOKENS``, ``STREAMWARD_TOKENS_FILE``); the legacy plaintext settings map into
the same table: ``STREAMWARD_API_TOKENS`` (token → project) as ``sessions:run`` +
``sessions:view``, ``STREAMWARD_ADMIN_TOKEN`` as ``admin`` of project ``default``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI
    from fastapi.routing import APIRoute

    from streamward.api.config import Settings

SESSIONS_RUN = "sessions:run"
SESSIONS_VIEW = "sessions:view"
ROUTES_ADMIN = "routes:admin"
ADMIN = "admin"
# no token at all: probes, metrics, the live page's HTML
PUBLIC = "public"
SCOPES = (SESSIONS_RUN, SESSIONS_VIEW, ROUTES_ADMIN, ADMIN)
Scope = Literal["sessions:run", "sessions:view", "routes:admin", "admin"]

# the OpenAPI extension naming an operation's scope: declared there, enforced from there
SCOPE_EXTENSION = "x-streamward-scope"
# two HTTP bearer schemes, so Swagger UI's "Authorize" takes a project token and an admin
# token side by side: /v1 and routes:admin operations accept either, the rest of /admin
# only the admin one (both are the same Authorization header on the wire)
USER_SCHEME = "userBearer"
ADMIN_SCHEME = "adminBearer"
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/admin/ui"})
_ROUTES_PREFIXES = ("/admin/routes", "/admin/sources")
_READ_METHODS = frozenset({"GET", "HEAD"})


def derived_scope(method: str, path: str) -> str:
    """The scope a route needs, from its method and path template alone, so a new endpoint
    is covered without code of its own: /v1 reads → ``sessions:view``, other /v1 methods →
    ``sessions:run``; routes and sources (reads too: a route's expressions are its project's
    configuration) → ``routes:admin``; the rest of /admin → ``admin``. Anything else
    needs ``admin`` (closed unless listed as public)."""
    if path in PUBLIC_PATHS:
        return PUBLIC
    if path == "/v1" or path.startswith("/v1/"):
        return SESSIONS_VIEW if method.upper() in _READ_METHODS else SESSIONS_RUN
    if path.startswith(_ROUTES_PREFIXES):
        return ROUTES_ADMIN
    return ADMIN


class TokenSpec(BaseModel):
    """One configured token: ``{"sha256", "project", "scopes", "name"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256")]
    project: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,200}$")] = "default"
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1)]
    # for logs and docs only ("ci-2025-06"): which token of a project this is
    name: Annotated[str, Field(max_length=200)] = ""


TOKEN_LIST: TypeAdapter[list[TokenSpec]] = TypeAdapter(list[TokenSpec])


def token_digest(token: str) -> str:
    """The SHA-256 hex digest a token is configured by (``streamward token hash``)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for: its project, and its scopes with ``admin`` expanded."""

    project: str
    scopes: frozenset[str]
    name: str

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


def _principal(project: str, scopes: tuple[str, ...] | list[str], name: str) -> Principal:
    granted = frozenset(SCOPES) if ADMIN in scopes else frozenset(scopes)
    return Principal(project, granted, name)


class TokenConfigError(ValueError):
    """The token settings cannot be read (a bad file, a malformed entry)."""


@dataclass(frozen=True)
class TokenTable:
    """Every configured token as (digest bytes, principal), and whether /v1 needs a token."""

    entries: tuple[tuple[bytes, Principal], ...] = ()
    # False only when nothing but the legacy ADMIN_TOKEN is configured: /v1 then stays open
    # in project ``default``, as before scopes (serving.py refuses that on a public bind)
    v1_auth: bool = False

    def lookup(self, token: str) -> Principal | None:
        """The token's principal, comparing its digest with every configured one in
        constant time and without an early exit, so the time taken reveals nothing."""
        given = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for digest, principal in self.entries:
            if hmac.compare_digest(given, digest):
                found = principal
        return found

    @property
    def projects(self) -> frozenset[str]:
        """Every project a configured token acts in (``default`` for the admin token)."""
        return frozenset(p.project for _, p in self.entries)

    def grants(self, scope: str) -> bool:
        """Whether any configured token has ``scope`` (no admin token: admin_disabled)."""
        return any(scope in p.scopes for _, p in self.entries)


def read_tokens_file(path: str) -> list[TokenSpec]:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise TokenConfigError(f"STREAMWARD_TOKENS_FILE {path}: {exc.strerror}") from exc
    try:
        return TOKEN_LIST.validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TokenConfigError(
            f"STREAMWARD_TOKENS_FILE {path}: {where}: {first['msg']} "
            '(expected a JSON list of {"sha256", "project", "scopes", "name"})'
        ) from None


def build_table(settings: Settings) -> TokenTable:
    """The table from every token setting; raises TokenConfigError for an unreadable file."""
    specs = list(settings.tokens)
    if settings.tokens_file:
        specs += read_tokens_file(settings.tokens_file)
    entries: list[tuple[bytes, Principal]] = [
        (bytes.fromhex(s.sha256), _principal(s.project, s.scopes, s.name)) for s in specs
    ]
    for i, (token, project) in enumerate(settings.api_tokens.items()):
        digest = hashlib.sha256(token.encode()).digest()
        scopes = [SESSIONS_RUN, SESSIONS_VIEW]
        entries.append((digest, _principal(project, scopes, f"STREAMWARD_API_TOKENS[{i}]")))
    v1_auth = bool(entries)
    if settings.admin_token:
        digest = hashlib.sha256(settings.admin_token.encode()).digest()
        entries.append((digest, _principal("default", [ADMIN], "STREAMWARD_ADMIN_TOKEN")))
    return TokenTable(tuple(entries), v1_auth)


def challenge(scope: str | None = None, error: str | None = None) -> dict[str, str]:
    """The ``WWW-Authenticate`` header of a refusal (RFC 6750)."""
    value = "Bearer"
    if error is not None:
        value += f' error="{error}"'
    if scope is not None:
        value += f' scope="{scope}"'
    return {"WWW-Authenticate": value}


_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing_token: no bearer token"},
    403: {
        "description": "invalid_token: unknown token; insufficient_scope: the token lacks the "
        "operation's scope (`required_scope`); admin_disabled: no token has it"
    },
}


def security_requirement(scope: str) -> list[dict[str, list[str]]]:
    """The OpenAPI ``security`` of an operation needing ``scope`` (alternatives: any one)."""
    if scope == PUBLIC:
        return []
    if scope == ADMIN:
        return [{ADMIN_SCHEME: [scope]}]
    return [{USER_SCHEME: [scope]}, {ADMIN_SCHEME: [scope]}]


def _declare(route: APIRoute) -> None:
    extra: dict[str, Any] = dict(route.openapi_extra or {})
    scope = extra.get(SCOPE_EXTENSION)
    if scope is None:
        found = {derived_scope(m, route.path_format) for m in route.methods or ()}
        if len(found) != 1:
            raise ValueError(f"{route.path_format}: methods need different scopes {found}")
        scope = found.pop()
    if scope != PUBLIC and scope not in SCOPES:
        raise ValueError(f"{route.path_format}: unknown scope {scope!r}")
    extra[SCOPE_EXTENSION] = scope
    extra["security"] = security_requirement(scope)
    # new dicts: never write into one the route was given (EVENT_BODY_OPENAPI, _ERRORS, ...)
    route.openapi_extra = extra
    if scope != PUBLIC:
        route.responses = {**route.responses, **_AUTH_RESPONSES}


def declare_scopes(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Give every operation of ``routers`` its scope (``x-streamward-scope``) and security
    requirement in the OpenAPI document. The guards read the same value from the matched
    route, so what the document says is what is enforced. A route may state its own scope
    in ``openapi_extra``; a route whose methods would need different scopes is refused.

    The routes are the routers' own objects (FastAPI matches them, unflattened, for every app
    including the router): setting the value again for another app changes nothing."""
    from fastapi.routing import APIRoute

    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                _declare(route)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[USER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A project's token (`sessions:run`, `sessions:view`, "
            "`routes:admin`); each operation names the scope it needs in "
            f"`{SCOPE_EXTENSION}`.",
        }
        schemes[ADMIN_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token with scope `admin` (`STREAMWARD_ADMIN_TOKEN`, the "
            "runners' and the CLI's token): every operation, `admin` implies every scope.",
        }
        app.openapi_schema = doc
        return doc

    setattr(app, "openapi", openapi)  # noqa: B010 (as problems._document_problems)


def route_scope(scope: MutableMapping[str, Any]) -> str:
    """The scope the matched route declares (``admin`` when it declares none: closed)."""
    route = scope.get("route")
    extra = getattr(route, "openapi_extra", None)
    if extra is None:
        return ADMIN
    declared: str = extra.get(SCOPE_EXTENSION, ADMIN)
    return declared
