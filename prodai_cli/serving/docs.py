"""The interactive API docs (``/docs``) served from the server itself, so they work without internet.

FastAPI's own ``/docs`` page loads Swagger UI's script and style from a CDN and ``/redoc`` loads ReDoc and
its fonts from others: offline (an air-gapped cluster, a laptop on a train) both pages stay blank while
answering 200. Here ``/docs`` is the same Swagger UI page with every asset under ``/docs/assets/``, read
from the ``swagger-ui-bundle`` package; ``/redoc`` redirects to it (no packaged ReDoc). The page references
no other host (:func:`external_hosts` finds any, for tests and for ``prodai check``'s docs item).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

# FastAPI reads handler annotations at runtime: Request must be importable by name here.
from starlette.requests import Request

if TYPE_CHECKING:
    from fastapi import FastAPI

DOCS_ROUTE = "/docs"
OAUTH2_REDIRECT_ROUTE = "/docs/oauth2-redirect"
ASSETS_ROUTE = "/docs/assets"
REDOC_ROUTE = "/redoc"
# src="..." / href="..." / url(...) values that name a host: absolute (scheme://) or scheme-relative (//).
_EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["'](?P<a>(?:[a-z][a-z0-9+.\-]*:)?//[^"'/]+)|url\(\s*["']?(?P<b>(?:[a-z][a-z0-9+.\-]*:)?//[^"')/]+)""",
    re.IGNORECASE,
)


def external_hosts(html: str) -> list[str]:
    """Hosts that the page's ``src``/``href``/``url()`` references load from, other than its own (sorted)."""
    found = {(match.group("a") or match.group("b")).split("//", 1)[1] for match in _EXTERNAL.finditer(html)}
    return sorted(found)


_LOCAL = re.compile(r"""(?:src|href)\s*=\s*["'](?P<path>/(?!/)[^"']*)""", re.IGNORECASE)


def local_assets(html: str) -> list[str]:
    """Paths on the page's own server that its ``src``/``href`` references load (in page order, unique)."""
    return list(dict.fromkeys(match.group("path") for match in _LOCAL.finditer(html)))


def register_docs(app: FastAPI) -> None:
    """Add ``/docs`` (Swagger UI from ``/docs/assets/``), its OAuth2 redirect page and ``/redoc`` (a redirect).

    The app must be created with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off).
    """
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from starlette.responses import HTMLResponse, RedirectResponse
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS_ROUTE, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix (root_path), every URL of the page carries the prefix.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_ROUTE}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_ROUTE,
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> RedirectResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return RedirectResponse(root + DOCS_ROUTE, status_code=307)

    app.add_api_route(DOCS_ROUTE, docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT_ROUTE, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(REDOC_ROUTE, redoc, methods=["GET"], include_in_schema=False)
