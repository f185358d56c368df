"""The interactive API docs (``/docs`` Swagger UI, ``/redoc``) served without a CDN.

FastAPI's own pages load their JavaScript and CSS from jsDelivr, so on a machine without
internet ``/docs`` is a blank page. The ``fastapi-offline`` package bundles the same
swagger-ui and redoc assets; they are served here from ``/docs/assets``. Its
``FastAPIOffline`` factory is not used: it builds the app itself and registers the docs
routes before every other, and ``create_app`` matches the hot paths first. Every route here is
public (no token: the pages are static, the operations they call are guarded as ever) and
left out of the OpenAPI document.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# the pages may load nothing from another host: redoc's sidebar links a logo on
# cdn.redoc.ly (no option turns it off; blocked, the image hides itself). Inline script and
# style: the pages' own bootstrap; blob: workers: redoc's search index
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)


def _locked(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets to ``app`` (built with ``docs_url=None``,
    ``redoc_url=None``)."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    # Swagger UI would send a non-local spec URL to validator.swagger.io for a badge
    app.swagger_ui_parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", ""))

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return _locked(
            get_swagger_ui_html(
                openapi_url=f"{base}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{base}{OAUTH2_REDIRECT_URL}",
                swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return _locked(
            get_redoc_html(
                openapi_url=f"{base}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,  # fonts.googleapis.com: another CDN
            )
        )
